"""docs/payments.md's recipe, run: a recorded checkout-completed event delivered twice (and
twice at once) through docs/examples/payment_webhook.py credits the account once, with a
billing token that may grant nothing but PURCHASE credits."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import sys
import time
from pathlib import Path

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.transport.grpc.auth import token_digest
from tests.grpc_errors import expect_error
from tests.support.serving import serving

ROOT = Path(__file__).resolve().parents[2]
EVENT = (ROOT / "tests" / "fixtures" / "stripe_checkout_session_completed.json").read_bytes()
SECRET = "whsec_test_secret"
BILLING_TOKEN = "cst_billing-test-token"
ADMIN_TOKEN = "cst_admin-test-token"


def _recipe():
    spec = importlib.util.spec_from_file_location(
        "payment_webhook", ROOT / "docs" / "examples" / "payment_webhook.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


webhook = _recipe()


def signed(payload: bytes, at_s: int | None = None) -> str:
    at_s = int(time.time()) if at_s is None else at_s
    digest = hmac.new(SECRET.encode(), f"{at_s}.".encode() + payload, hashlib.sha256)
    return f"t={at_s},v1={digest.hexdigest()}"


@pytest.fixture
async def billing_stub(test_settings):
    settings = test_settings.replace(
        auth_disabled=False, shutdown_grace_s=1,
        auth_tokens=f"payments billing {token_digest(BILLING_TOKEN)}; "
                    f"ops admin {token_digest(ADMIN_TOKEN)}")
    async with serving(settings) as stub:
        yield stub


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


async def test_an_event_delivered_twice_credits_once(billing_stub, db):
    first = await webhook.handle(billing_stub, BILLING_TOKEN, EVENT, signed(EVENT), SECRET)
    again = await webhook.handle(billing_stub, BILLING_TOKEN, EVENT, signed(EVENT), SECRET)
    both = await asyncio.gather(*(
        webhook.handle(billing_stub, BILLING_TOKEN, EVENT, signed(EVENT), SECRET)
        for _ in range(2)))

    assert again == first and both == [first, first]
    assert (first.entry.amount, first.entry.grant_type) == (500, pb.GRANT_TYPE_PURCHASE)
    assert first.entry.account_id == "user-42" and first.entry.actor == "payments"
    assert dict(first.entry.metadata)["payment_intent"] == "pi_3QXk3tLkdIwHu7ix0mA1b2C3"
    balance = await billing_stub.GetBalance(pb.GetBalanceRequest(account_id="user-42"),
                                            metadata=bearer(BILLING_TOKEN))
    assert balance.balance.balance == 500 and balance.totals.purchased == 500
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 1


async def test_events_not_to_act_on_and_forged_ones(billing_stub, db):
    event = json.loads(EVENT)
    event["data"]["object"]["payment_status"] = "unpaid"
    unpaid = json.dumps(event).encode()
    assert await webhook.handle(billing_stub, BILLING_TOKEN, unpaid, signed(unpaid),
                                SECRET) is None
    for header in (signed(EVENT).replace("v1=", "v1=0"), "t=1,v1=abc", "nonsense",
                   signed(EVENT, at_s=int(time.time()) - 3600)):
        with pytest.raises(webhook.BadEvent):
            await webhook.handle(billing_stub, BILLING_TOKEN, EVENT, header, SECRET)
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 0


async def test_a_billing_token_grants_purchases_only(billing_stub, db):
    promo = pb.GrantRequest(account_id="u1", amount=5, type=pb.GRANT_TYPE_PROMO,
                            idempotency_key="p")
    error = await expect_error(billing_stub.Grant(promo, metadata=bearer(BILLING_TOKEN)))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert "GRANT_TYPE_PURCHASE" in error.message
    for call in (
            billing_stub.CheckAndReserve(pb.CheckAndReserveRequest(
                account_id="u1", amount=1, idempotency_key="r"), metadata=bearer(BILLING_TOKEN)),
            billing_stub.Adjust(pb.AdjustRequest(
                account_id="u1", mode=pb.ADJUST_MODE_ADD, amount=1, idempotency_key="a",
                reason="x"), metadata=bearer(BILLING_TOKEN))):
        assert (await expect_error(call)).code is grpc.StatusCode.PERMISSION_DENIED
    error = await expect_error(billing_stub.EnsureAccount(pb.EnsureAccountRequest(
        account_id="u2", plan="default"), metadata=bearer(BILLING_TOKEN)))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED  # a plan's welcome credits
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 0
    await billing_stub.Grant(promo, metadata=bearer(ADMIN_TOKEN))  # an admin may
