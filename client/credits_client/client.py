"""CreditsClient: the asyncio client (docs in client/README.md).

Every call is retried on UNAVAILABLE, DEADLINE_EXCEEDED (of one attempt) and ABORTED, with
jittered exponential backoff, a bounded number of times within the call's timeout, and with
the same request: the same idempotency key for Grant and CheckAndReserve (made once per call
when the caller gives none), the same reservation and amount for Commit and Release. A reply
lost after the server committed is answered, on the retry, with the original result: never a
second charge.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_client import _mapping, types
from credits_client.errors import CreditsError, from_item_error, from_rpc_error
from credits_client.hold import Hold, hold_of_call
from credits_client.offline import FailOpen
from credits_client.product_calls import ProductCalls

T = TypeVar("T")
# A server that comes back is reconnected to within two seconds, not grpc's default two minutes
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100, "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
}
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                           grpc.StatusCode.ABORTED})


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in RETRIED_CODES


def _duration(seconds: float) -> Duration:
    value = Duration()
    value.FromMilliseconds(int(seconds * 1000))
    return value


class CreditsClient(ProductCalls):
    """An asyncio client of one credits-service (or a balancer in front of several).

    `target` is host:port. `token` is sent as a bearer token on every call. `tls`: True for
    the system's roots, or PEM bytes of the CA to trust (`root_certificates`); mutual TLS
    adds `client_certificate` and `client_key` (PEM bytes). `timeout_s`
    bounds a call with its retries; `attempt_timeout_s` one attempt; `attempts_max` and the
    backoff bound the retries. `interceptors` and `options` go to the grpc.aio channel.
    `fail_open`: holds of an amount proceed without the service, within an allowance, when
    it cannot be reached (offline.py says the risk); None, the default: they fail.
    """

    def __init__(
        self, target: str, *, token: str | None = None, tls: bool = False,
        root_certificates: bytes | None = None, client_certificate: bytes | None = None,
        client_key: bytes | None = None, timeout_s: float = 10.0,
        attempt_timeout_s: float = 3.0, attempts_max: int = 5,
        backoff_initial_s: float = 0.05, backoff_max_s: float = 1.0,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        fail_open: FailOpen | None = None,
    ) -> None:
        options = list({**_CHANNEL_OPTIONS, **dict(options)}.items())
        if tls or root_certificates or client_certificate:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=client_key,
                certificate_chain=client_certificate)
            self._channel = grpc.aio.secure_channel(
                target, credentials, options=options, interceptors=list(interceptors))
        else:
            self._channel = grpc.aio.insecure_channel(
                target, options=options, interceptors=list(interceptors))
        self._stub = credits_pb2_grpc.CreditsServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.attempts_max = attempts_max
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.fail_open = fail_open

    async def __aenter__(self) -> CreditsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        """Call `method` (the RPC's name) with `request`, retried as the module says; a
        typed CreditsError when it fails for good. The protobuf answer: the escape hatch
        for RPCs without a method here."""
        rpc = getattr(self._stub, method)
        budget_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget_s
        try:  # the first attempt on its own: no retry machinery on the common path
            return await rpc(request, timeout=min(self.attempt_timeout_s, budget_s),
                             metadata=self._metadata)
        except grpc.aio.AioRpcError as failure:
            if not _transient(failure) or self.attempts_max <= 1:
                raise from_rpc_error(failure) from None
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.attempts_max - 1) | stop_after_delay(budget_s),
            wait=wait_random_exponential(multiplier=self.backoff_initial_s,
                                         max=self.backoff_max_s),
            reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    left_s = deadline - time.monotonic()
                    if left_s <= 0:
                        raise grpc.aio.AioRpcError(
                            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                            grpc.aio.Metadata(), "the call's timeout passed before it was sent")
                    # A retry waits (within its attempt) for the connection to come back
                    return await rpc(request, timeout=min(self.attempt_timeout_s, left_s),
                                     metadata=self._metadata, wait_for_ready=True)
        except grpc.aio.AioRpcError as failure:
            raise from_rpc_error(failure) from None
        raise AssertionError("tenacity returns or raises")

    # --- accounts and grants ------------------------------------------------------------

    async def ensure_account(
        self, account_id: str, plan: str = "", *, timeout_s: float | None = None
    ) -> types.EnsureAccountResult:
        """The account, created first (on `plan`, with its welcome credits) if missing."""
        answer = await self.call("EnsureAccount", pb.EnsureAccountRequest(
            account_id=account_id, plan=plan), timeout_s)
        return types.EnsureAccountResult(_mapping.account(answer.account), answer.created,
                                         _mapping.balance(answer.balance))

    async def grant(
        self, account_id: str, amount: int, *, grant_type: str = "PURCHASE",
        idempotency_key: str | None = None, reason: str = "",
        metadata: Mapping[str, str] | None = None, expire_time: datetime | None = None,
        timeout_s: float | None = None,
    ) -> types.GrantResult:
        """Add credits (a lot of `grant_type`: PURCHASE, PROMO, ADMIN_GRANT, ...). Give the
        idempotency key of the purchase (an order id) so a payment is credited once."""
        request = pb.GrantRequest(
            account_id=account_id, amount=amount, type=pb.GrantType.Value(
                f"GRANT_TYPE_{grant_type}"),
            idempotency_key=idempotency_key or str(uuid.uuid4()), reason=reason,
            metadata=dict(metadata or {}))
        if expire_time is not None:
            request.expire_time.CopyFrom(_mapping.stamp(expire_time))
        answer = await self.call("Grant", request, timeout_s)
        return types.GrantResult(answer.entry.entry_id, answer.lot.lot_id,
                                 _mapping.balance(answer.balance))

    async def get_balance(
        self, account_id: str, *, timeout_s: float | None = None
    ) -> types.Balance:
        answer = await self.call("GetBalance", pb.GetBalanceRequest(account_id=account_id),
                                 timeout_s)
        return _mapping.balance(answer.balance)

    async def account_details(
        self, account_id: str, *, expiring_within_s: float | None = None,
        timeout_s: float | None = None,
    ) -> types.AccountDetails:
        """All GetBalance says: the balance, the account, its lots, what expires within
        `expiring_within_s`, lifetime totals, and a member's standing and pool."""
        request = pb.GetBalanceRequest(account_id=account_id)
        if expiring_within_s is not None:
            request.expiring_within.CopyFrom(_duration(expiring_within_s))
        return _mapping.account_details(await self.call("GetBalance", request, timeout_s))

    async def quote(
        self, account_id: str, feature: str, units: int, *, timeout_s: float | None = None
    ) -> types.Quote:
        """What `units` of `feature` cost the account now, and whether it can afford it."""
        answer = await self.call("Quote", pb.QuoteRequest(
            account_id=account_id, feature=feature, units=units), timeout_s)
        return types.Quote(answer.cost, answer.feature, answer.units, answer.rate_card_version,
                           answer.plan, answer.affordable,
                           _mapping.balance(answer.balance) if answer.HasField("balance")
                           else None)

    async def adjust(
        self, account_id: str, amount: int, *, mode: str = "ADD",
        idempotency_key: str | None = None, reason: str,
        metadata: Mapping[str, str] | None = None, expected_balance: int | None = None,
        allow_negative: bool = False, timeout_s: float | None = None,
    ) -> types.EntriesResult:
        """An operator's correction (admin only): `mode` ADD (a new lot), DEDUCT, or SET (the
        balance to `amount`; with `expected_balance`, only if the balance is that)."""
        request = pb.AdjustRequest(
            account_id=account_id, mode=pb.AdjustMode.Value(f"ADJUST_MODE_{mode}"),
            amount=amount, idempotency_key=idempotency_key or str(uuid.uuid4()),
            reason=reason, metadata=dict(metadata or {}), allow_negative=allow_negative)
        if expected_balance is not None:
            request.expected_balance = expected_balance
        return _mapping.entries_result(await self.call("Adjust", request, timeout_s))

    async def transfer(
        self, from_account_id: str, to_account_id: str, amount: int, *,
        idempotency_key: str | None = None, reason: str = "",
        metadata: Mapping[str, str] | None = None, timeout_s: float | None = None,
    ) -> types.TransferResult:
        """Move credits between accounts, once per idempotency key."""
        answer = await self.call("Transfer", pb.TransferRequest(
            from_account_id=from_account_id, to_account_id=to_account_id, amount=amount,
            idempotency_key=idempotency_key or str(uuid.uuid4()), reason=reason,
            metadata=dict(metadata or {})), timeout_s)
        return types.TransferResult(
            answer.transfer_id, tuple(_mapping.entry(e) for e in answer.from_entries),
            tuple(_mapping.entry(e) for e in answer.to_entries),
            _mapping.balance(answer.from_balance), _mapping.balance(answer.to_balance))

    async def refund(
        self, *, reservation_id: str = "", usage_entry_id: str = "",
        amount: int | None = None, idempotency_key: str | None = None, reason: str = "",
        metadata: Mapping[str, str] | None = None, timeout_s: float | None = None,
    ) -> types.EntriesResult:
        """Give back committed usage (all of it, or `amount`), of a reservation or a USAGE
        entry."""
        if bool(reservation_id) == bool(usage_entry_id):
            raise ValueError("refund: a reservation_id or a usage_entry_id")
        request = pb.RefundRequest(
            idempotency_key=idempotency_key or str(uuid.uuid4()), reason=reason,
            metadata=dict(metadata or {}))
        if reservation_id:
            request.reservation_id = reservation_id
        else:
            request.usage_entry_id = usage_entry_id
        if amount is not None:
            request.amount = amount
        return _mapping.entries_result(await self.call("Refund", request, timeout_s))

    async def set_account_status(
        self, account_id: str, status: str, *, reason: str, write_off_balance: bool = False,
        timeout_s: float | None = None,
    ) -> types.AccountChange:
        """ACTIVE, FROZEN or CLOSED (admin only)."""
        answer = await self.call("SetAccountStatus", pb.SetAccountStatusRequest(
            account_id=account_id, status=pb.AccountStatus.Value(f"ACCOUNT_STATUS_{status}"),
            reason=reason, write_off_balance=write_off_balance), timeout_s)
        return _mapping.account_change(answer)

    async def change_plan(
        self, account_id: str, plan: str, *, reason: str, timeout_s: float | None = None
    ) -> types.AccountChange:
        """Move the account to another plan (admin only)."""
        answer = await self.call("ChangePlan", pb.ChangePlanRequest(
            account_id=account_id, plan=plan, reason=reason), timeout_s)
        return _mapping.account_change(answer)

    async def list_reservations(
        self, account_id: str, *, statuses: Sequence[str] = (), page_size: int = 100,
        page_token: str = "", timeout_s: float | None = None,
    ) -> types.ReservationPage:
        """A page of the account's reservations (ACTIVE, COMMITTED, RELEASED, EXPIRED)."""
        answer = await self.call("ListReservations", pb.ListReservationsRequest(
            account_id=account_id, page_size=page_size, page_token=page_token,
            statuses=[pb.ReservationStatus.Value(f"RESERVATION_STATUS_{s}")
                      for s in statuses]), timeout_s)
        return types.ReservationPage(
            tuple(_mapping.reservation(r) for r in answer.reservations), answer.next_page_token)

    async def set_balance_alert(
        self, account_id: str, *, low_balance_credits: int | None = None,
        low_balance_percent: int | None = None, no_low_balance: bool = False,
        use_plan: bool = False, timeout_s: float | None = None,
    ) -> types.BalanceAlert:
        """Give the account its own low-balance rule (credits, a percentage of its last
        top-up, or none), or its plan's again (admin only; docs/events.md)."""
        chosen = {"low_balance_credits": low_balance_credits,
                  "low_balance_percent": low_balance_percent,
                  "no_low_balance": no_low_balance or None, "use_plan": use_plan or None}
        given = {k: v for k, v in chosen.items() if v is not None}
        if len(given) != 1:
            raise ValueError("set_balance_alert: exactly one rule")
        answer = await self.call("SetBalanceAlert", pb.SetBalanceAlertRequest(
            account_id=account_id, **given), timeout_s)
        alert = answer.alert
        return types.BalanceAlert(
            alert.account_id, alert.low_balance_credits, alert.low_balance_percent,
            alert.custom, alert.threshold, alert.last_top_up,
            _mapping.enum_name(pb.BalanceLevel, alert.level, "BALANCE_LEVEL_"))

    async def batch_reserve(
        self, items: Sequence[types.ReserveItem], *, timeout_s: float | None = None
    ) -> list[types.HoldResult | CreditsError]:
        """Place many holds in one call: for each item, in order, its HoldResult or the
        typed error it alone would have raised. Retries resend every item with its key."""
        requests = []
        for item in items:
            if (item.amount is None) == (item.feature is None):
                raise ValueError("batch_reserve: each item an amount, or a feature's units")
            request = pb.CheckAndReserveRequest(
                account_id=item.account_id, amount=item.amount or 0,
                feature=item.feature or "", units=item.units or 0,
                idempotency_key=item.idempotency_key or str(uuid.uuid4()),
                metadata=item.metadata)
            if item.ttl_s is not None:
                request.ttl.CopyFrom(_duration(item.ttl_s))
            requests.append(request)
        answer = await self.call("BatchCheckAndReserve", pb.BatchCheckAndReserveRequest(
            items=requests), timeout_s)
        return [_mapping.hold(r.response) if r.HasField("response")
                else from_item_error(r.error) for r in answer.results]

    async def batch_commit(
        self, items: Sequence[types.CommitItem], *, timeout_s: float | None = None
    ) -> list[types.HoldResult | CreditsError]:
        """Commit many holds in one call: for each item, in order, its HoldResult or its
        typed error."""
        requests = []
        for item in items:
            request = pb.CommitRequest(reservation_id=item.reservation_id,
                                       metadata=item.metadata)
            if item.amount is not None:
                request.amount = item.amount
            if item.units is not None:
                request.units = item.units
            requests.append(request)
        answer = await self.call("BatchCommit", pb.BatchCommitRequest(items=requests),
                                 timeout_s)
        return [_mapping.hold(r.response) if r.HasField("response")
                else from_item_error(r.error) for r in answer.results]

    async def history(
        self, account_id: str, *, page_size: int = 100, page_token: str = "",
        entry_types: Sequence[str] = (), timeout_s: float | None = None,
    ) -> types.HistoryPage:
        """A page of the account's ledger entries, newest first."""
        answer = await self.call("History", pb.HistoryRequest(
            account_id=account_id, page_size=page_size, page_token=page_token,
            types=[pb.EntryType.Value(f"ENTRY_TYPE_{t}") for t in entry_types]), timeout_s)
        return types.HistoryPage(tuple(_mapping.entry(e) for e in answer.entries),
                                 answer.next_page_token)

    async def watch_events(
        self, *, cursor: str = "", from_oldest: bool = False,
        event_types: Sequence[str] = (), account_ids: Sequence[str] = (),
        on_cursor: Callable[[str], Any] | None = None,
    ) -> AsyncIterator[types.Event]:
        """The events after `cursor` (empty: from now, or the oldest kept with
        `from_oldest`), for ever, in commit order (WatchEvents, docs/events.md). A stream the
        server ends UNAVAILABLE (draining, a restart, a stall) is opened again from the last
        cursor, with backoff, so no event is missed or repeated. `on_cursor` is told every
        cursor the stream moves to, events' and heartbeats': save it to resume after a
        restart of your own."""
        backoff_s = self.backoff_initial_s
        request = pb.WatchEventsRequest(
            cursor=cursor, from_oldest=from_oldest and not cursor,
            event_types=[pb.EventType.Value(f"EVENT_TYPE_{t}") for t in event_types],
            account_ids=list(account_ids))
        while True:
            call = self._stub.WatchEvents(request, metadata=self._metadata,
                                          wait_for_ready=True)
            try:
                async for response in call:
                    backoff_s = self.backoff_initial_s
                    request.cursor, request.from_oldest = response.cursor, False
                    if on_cursor is not None:
                        on_cursor(response.cursor)
                    if response.HasField("event"):
                        yield _mapping.event(response.event)
            except grpc.aio.AioRpcError as failure:
                if failure.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise from_rpc_error(failure) from None
            finally:
                call.cancel()
            await asyncio.sleep(random.uniform(0, backoff_s))
            backoff_s = min(backoff_s * 2, self.backoff_max_s)

    # --- holds --------------------------------------------------------------------------

    async def reserve(
        self, account_id: str, *, amount: int | None = None, feature: str | None = None,
        units: int | None = None, ttl_s: float | None = None,
        idempotency_key: str | None = None, metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> types.HoldResult:
        """Place a hold of `amount` credits, or of what `units` of `feature` cost."""
        if (amount is None) == (feature is None):
            raise ValueError("reserve: an amount, or a feature with its units")
        request = pb.CheckAndReserveRequest(
            account_id=account_id, amount=amount or 0, feature=feature or "",
            units=units or 0, idempotency_key=idempotency_key or str(uuid.uuid4()),
            metadata=dict(metadata or {}))
        if ttl_s is not None:
            request.ttl.CopyFrom(_duration(ttl_s))
        return _mapping.hold(await self.call("CheckAndReserve", request, timeout_s))

    async def commit(
        self, reservation_id: str, *, amount: int | None = None, units: int | None = None,
        metadata: Mapping[str, str] | None = None, timeout_s: float | None = None,
    ) -> types.HoldResult:
        """Capture a hold: what it held, `amount` credits, or what `units` cost at its
        price."""
        request = pb.CommitRequest(reservation_id=reservation_id,
                                   metadata=dict(metadata or {}))
        if amount is not None:
            request.amount = amount
        if units is not None:
            request.units = units
        return _mapping.hold(await self.call("Commit", request, timeout_s))

    async def release(
        self, reservation_id: str, reason: str = "", *, timeout_s: float | None = None
    ) -> types.HoldResult:
        return _mapping.hold(await self.call("Release", pb.ReleaseRequest(
            reservation_id=reservation_id, reason=reason), timeout_s))

    async def extend(
        self, reservation_id: str, ttl_s: float, *, timeout_s: float | None = None
    ) -> types.HoldResult:
        """Keep a hold `ttl_s` longer from now."""
        return _mapping.hold(await self.call("ExtendReservation", pb.ExtendReservationRequest(
            reservation_id=reservation_id, ttl=_duration(ttl_s)), timeout_s))

    def hold(
        self, account_id: str, *, amount: int | None = None, feature: str | None = None,
        units: int | None = None, ttl_s: float = 60.0,
        metadata: Mapping[str, str] | None = None,
    ) -> Hold:
        """`async with client.hold(...) as hold:` places the hold, runs the block, commits on
        success (the estimate, or what `hold.commit(...)` set) and releases on an exception;
        while the block runs it extends the hold every third of `ttl_s`."""
        if (amount is None) == (feature is None):
            raise ValueError("hold: an amount, or a feature with its units")
        return Hold(self, account_id, amount=amount, feature=feature, units=units,
                    ttl_s=ttl_s, metadata=metadata)

    def metered(
        self, *, account: str | Callable[..., str] = "account_id",
        feature: str | None = None, units: int | Callable[..., int] | None = None,
        amount: int | Callable[..., int] | None = None, ttl_s: float = 60.0,
    ) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
        """A decorator: each call of the async function runs inside a hold. `account` names
        the function's argument that holds the account id (or computes it from the
        arguments); `units` and `amount` may be numbers or functions of the arguments. The
        function may set the actual use with `hold.commit(...)` when it takes a `hold`
        keyword argument."""

        def decorate(function: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
            signature = inspect.signature(function)
            wants_hold = "hold" in signature.parameters

            @functools.wraps(function)
            async def metered_call(*args: Any, **kwargs: Any) -> T:
                account_id, options = hold_of_call(
                    signature, account, {"feature": feature, "units": units, "amount": amount,
                                         "ttl_s": ttl_s}, args, kwargs)
                async with self.hold(account_id, **options) as hold:
                    if wants_hold:
                        kwargs["hold"] = hold
                    return await function(*args, **kwargs)

            return metered_call

        return decorate
