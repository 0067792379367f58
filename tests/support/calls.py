"""The service's requests as the tests build and send them: a `*_request` function builds a
request (for a batch item, a timeout of the caller's own, or a retrying load), and the function
named for the call sends it. An idempotency key left out is a fresh one."""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc

Stub = credits_pb2_grpc.CreditsServiceStub


def _key(key: str | None) -> str:
    return str(uuid.uuid4()) if key is None else key


def grant_request(account: str, amount: int, *, key: str | None = None,
                  grant_type: int = pb.GRANT_TYPE_PURCHASE, expire_time: Timestamp | None = None,
                  priority: int | None = None, **fields: Any) -> pb.GrantRequest:
    """A GrantRequest; expire_time and priority are left unset when None."""
    request = pb.GrantRequest(account_id=account, amount=amount, type=grant_type,
                              idempotency_key=_key(key), **fields)
    if expire_time is not None:
        request.expire_time.CopyFrom(expire_time)
    if priority is not None:
        request.priority = priority
    return request


async def grant(stub: Stub, account: str, amount: int, *, key: str | None = None,
                grant_type: int = pb.GRANT_TYPE_PURCHASE, expire_time: Timestamp | None = None,
                priority: int | None = None, **fields: Any) -> pb.GrantResponse:
    """Send grant_request(...) to Grant."""
    return await stub.Grant(grant_request(
        account, amount, key=key, grant_type=grant_type, expire_time=expire_time,
        priority=priority, **fields))


def reserve_request(account: str, amount: int, *, key: str | None = None,
                    ttl_s: int | None = None, **fields: Any) -> pb.CheckAndReserveRequest:
    """A CheckAndReserveRequest; no ttl_s (nor ttl in fields) means the server's default TTL."""
    request = pb.CheckAndReserveRequest(account_id=account, amount=amount,
                                        idempotency_key=_key(key), **fields)
    if ttl_s is not None:
        request.ttl.CopyFrom(Duration(seconds=ttl_s))
    return request


async def reserve(stub: Stub, account: str, amount: int, *, key: str | None = None,
                  ttl_s: int | None = None, **fields: Any) -> pb.CheckAndReserveResponse:
    """Send reserve_request(...) to CheckAndReserve."""
    return await stub.CheckAndReserve(
        reserve_request(account, amount, key=key, ttl_s=ttl_s, **fields))


async def place_reservation(stub: Stub, account: str, amount: int, *, key: str | None = None,
                            ttl_s: int | None = None) -> str:
    """Send reserve_request(...) to CheckAndReserve; return the new reservation's id."""
    response = await reserve(stub, account, amount, key=key, ttl_s=ttl_s)
    return response.reservation.reservation_id


def commit_request(reservation_id: str, amount: int | None = None,
                   **fields: Any) -> pb.CommitRequest:
    """A CommitRequest; no amount means the held amount."""
    request = pb.CommitRequest(reservation_id=reservation_id, **fields)
    if amount is not None:
        request.amount = amount
    return request


async def commit(stub: Stub, reservation_id: str, amount: int | None = None,
                 **fields: Any) -> pb.CommitResponse:
    """Send commit_request(...) to Commit."""
    return await stub.Commit(commit_request(reservation_id, amount, **fields))


def release_request(reservation_id: str, reason: str = "") -> pb.ReleaseRequest:
    """A ReleaseRequest."""
    return pb.ReleaseRequest(reservation_id=reservation_id, reason=reason)


async def release(stub: Stub, reservation_id: str, reason: str = "") -> pb.ReleaseResponse:
    """Send release_request(...) to Release."""
    return await stub.Release(release_request(reservation_id, reason))


async def extend(stub: Stub, reservation_id: str, ttl_s: int) -> pb.ExtendReservationResponse:
    """ExtendReservation to `ttl_s` seconds from now."""
    return await stub.ExtendReservation(pb.ExtendReservationRequest(
        reservation_id=reservation_id, ttl=Duration(seconds=ttl_s)))


async def get_balance(stub: Stub, account: str, **fields: Any) -> pb.GetBalanceResponse:
    """GetBalance: the balance with the account's lots (and expiring_amount, if asked)."""
    return await stub.GetBalance(pb.GetBalanceRequest(account_id=account, **fields))


async def balance_of(stub: Stub, account: str) -> pb.Balance:
    """GetBalance, returning the account's Balance alone."""
    return (await get_balance(stub, account)).balance


def adjust(stub: Stub, account: str, mode: int, amount: int, *, key: str | None = None,
           **fields: Any) -> Any:
    """Adjust (a call to await), reason "ticket 7" unless given."""
    return stub.Adjust(pb.AdjustRequest(
        account_id=account, mode=mode, amount=amount, idempotency_key=_key(key),
        reason=fields.pop("reason", "ticket 7"), **fields))


def transfer(stub: Stub, giver: str, receiver: str, amount: int, *,
             key: str | None = None) -> Any:
    """Transfer (a call to await), reason "gift"."""
    return stub.Transfer(pb.TransferRequest(
        from_account_id=giver, to_account_id=receiver, amount=amount,
        idempotency_key=_key(key), reason="gift"))


def refund(stub: Stub, reservation_id: str, amount: int | None = None, *,
           key: str | None = None) -> Any:
    """Refund (a call to await) of all that is left, or of `amount`, reason "failed"."""
    request = pb.RefundRequest(reservation_id=reservation_id, idempotency_key=_key(key),
                               reason="failed")
    if amount is not None:
        request.amount = amount
    return stub.Refund(request)


async def committed(stub: Stub, account: str, amount: int) -> str:
    """A reservation of `amount`, committed for it; its id."""
    reservation_id = (await reserve(stub, account, amount)).reservation.reservation_id
    await stub.Commit(pb.CommitRequest(reservation_id=reservation_id))
    return reservation_id
