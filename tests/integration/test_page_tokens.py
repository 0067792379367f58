"""Page tokens of History and ListReservations: a token the service did not make is refused
before it is read, and even a correctly signed token whose position does not parse (signed
here with the key the service keeps in the database) is INVALID_PAGE_TOKEN, never INTERNAL:
positions of the wrong type, and times at the edges of the calendar."""

from __future__ import annotations

import base64
import json
import uuid

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.service.page_tokens import PageTokens
from tests.grpc_errors import expect_error

ACCOUNT = "tokens"


def _body(token: str) -> dict:
    body = token.rpartition(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def _unsigned(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def _signer(db) -> PageTokens:
    key = await db.fetchval("SELECT key FROM service_keys WHERE name = 'page_tokens'")
    return PageTokens(bytes(key))


async def _reservations_token(stub) -> str:
    await stub.Grant(pb.GrantRequest(account_id=ACCOUNT, amount=10, type=pb.GRANT_TYPE_PROMO,
                                     idempotency_key="g"))
    for i in range(3):
        await stub.CheckAndReserve(pb.CheckAndReserveRequest(
            account_id=ACCOUNT, amount=1, idempotency_key=f"r{i}"))
    page = await stub.ListReservations(pb.ListReservationsRequest(account_id=ACCOUNT,
                                                                  page_size=1))
    assert page.next_page_token
    return page.next_page_token


async def _history_token(stub) -> str:
    for i in range(3):
        await stub.Grant(pb.GrantRequest(account_id=ACCOUNT, amount=1,
                                         type=pb.GRANT_TYPE_PROMO, idempotency_key=f"h{i}"))
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=1))
    assert page.next_page_token
    return page.next_page_token


def _assert_invalid_token(error) -> None:
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                          "INVALID_PAGE_TOKEN"), error
    assert error.metadata == {"field": "page_token"}


RESERVATION_POSITIONS = {
    "id a number": ["2026-01-01T00:00:00+00:00", 7],
    "id a list": ["2026-01-01T00:00:00+00:00", [1, 2]],
    "id an object": ["2026-01-01T00:00:00+00:00", {"a": 1}],
    "time a number": [5, str(uuid.uuid4())],
    "one element": ["2026-01-01T00:00:00+00:00"],
    "not a list": "2026-01-01T00:00:00+00:00",
    "naive time": ["2026-01-01T00:00:00", str(uuid.uuid4())],
    "past the calendar's end": ["9999-12-31T23:59:59-14:00", str(uuid.uuid4())],
    "before its start": ["0001-01-01T00:00:00+14:00", str(uuid.uuid4())],
    "not a uuid": ["2026-01-01T00:00:00+00:00", "not-a-uuid"],
}


@pytest.mark.parametrize("position", list(RESERVATION_POSITIONS))
async def test_a_signed_reservations_token_with_a_bad_position_is_invalid(stub, db, position):
    real = await _reservations_token(stub)
    forged = (await _signer(db)).encode(RESERVATION_POSITIONS[position], _body(real)["f"])
    error = await expect_error(stub.ListReservations(pb.ListReservationsRequest(
        account_id=ACCOUNT, page_size=1, page_token=forged)))
    _assert_invalid_token(error)


@pytest.mark.parametrize("position", list(RESERVATION_POSITIONS))
async def test_an_unsigned_reservations_token_is_refused_whatever_it_holds(stub, position):
    real = await _reservations_token(stub)
    payload = {**_body(real), "after": RESERVATION_POSITIONS[position]}
    for forged in (_unsigned(payload), _unsigned(payload) + "." + real.rpartition(".")[2]):
        error = await expect_error(stub.ListReservations(pb.ListReservationsRequest(
            account_id=ACCOUNT, page_size=1, page_token=forged)))
        _assert_invalid_token(error)


@pytest.mark.parametrize("position", [0, -1, 2**63, True, 1.5, "5", None, [1], {"a": 1}],
                         ids=repr)
async def test_a_signed_history_token_with_a_bad_position_is_invalid(stub, db, position):
    real = await _history_token(stub)
    forged = (await _signer(db)).encode(position, _body(real)["f"])
    error = await expect_error(stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=1, page_token=forged)))
    _assert_invalid_token(error)


async def test_a_real_token_pages_on_and_one_from_another_key_does_not(stub):
    real = await _history_token(stub)
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=1,
                                                page_token=real))
    assert len(page.entries) == 1
    other_key = PageTokens(b"not the service's key, 32 bytes.")
    error = await expect_error(stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=1,
        page_token=other_key.encode(_body(real)["after"], _body(real)["f"]))))
    _assert_invalid_token(error)
