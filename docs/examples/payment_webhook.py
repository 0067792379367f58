"""A payment webhook handler: a provider's "checkout completed" event becomes one PURCHASE
Grant, keyed by the event's id, so an event delivered twice (providers retry until they get a
2xx, and sometimes deliver twice anyway) credits the account once.

The shape is Stripe's (`checkout.session.completed`, the `Stripe-Signature` header); other
providers differ in names, not in the steps: verify the signature, take the account and the
credits from what your checkout put in the session, Grant with the event id as the key. Run it
with a `billing` token (`credits-service token --name payments --role billing`): that role may
Grant PURCHASE credits and read balances, nothing else.

docs/payments.md walks through it; tests/integration/test_payment_recipe.py runs it against a
real server with a recorded sample event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc

SIGNATURE_TOLERANCE_S = 300  # refuse events signed longer ago than this (replays)


class BadEvent(ValueError):
    """Not an event to act on: answer 400, and the provider shows it as failed."""


@dataclass(frozen=True)
class Purchase:
    event_id: str
    account_id: str
    credits: int
    session_id: str
    payment_intent: str


def verify_signature(payload: bytes, header: str, secret: str, now_s: float | None = None) -> None:
    """Check a `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">` header;
    raise BadEvent if no v1 signature matches or it is too old."""
    parts = [part.split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for key, value in parts if key == "t"]
    signatures = [value for key, value in parts if key == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        raise BadEvent("malformed signature header")
    signed = f"{timestamps[0]}.".encode() + payload
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, signature) for signature in signatures):
        raise BadEvent("signature does not match")
    if abs((now_s if now_s is not None else time.time()) - int(timestamps[0])) > (
            SIGNATURE_TOLERANCE_S):
        raise BadEvent("signature is too old")


def purchase_of(payload: bytes) -> Purchase | None:
    """The purchase a paid checkout event stands for; None for events not acted on."""
    event = json.loads(payload)
    if event.get("type") != "checkout.session.completed":
        return None
    session = event["data"]["object"]
    if session.get("payment_status") != "paid":
        return None  # e.g. a delayed payment method: act on the later succeeded event
    account_id = session.get("client_reference_id")
    credits = session.get("metadata", {}).get("credits", "")
    if not account_id or not credits.isdigit():
        raise BadEvent("the session has no client_reference_id or metadata.credits")
    return Purchase(event["id"], account_id, int(credits), session["id"],
                    session.get("payment_intent") or "")


async def handle(
    stub: credits_pb2_grpc.CreditsServiceStub, token: str, payload: bytes,
    signature_header: str, secret: str,
) -> pb.GrantResponse | None:
    """Act on one delivery: the Grant's response (the same one for every delivery of an
    event), or None for an event that needs nothing. Raises BadEvent (answer 400) or
    grpc.aio.AioRpcError (answer 500: the provider delivers again, and the key makes that
    safe)."""
    verify_signature(payload, signature_header, secret)
    purchase = purchase_of(payload)
    if purchase is None:
        return None
    return await stub.Grant(pb.GrantRequest(
        account_id=purchase.account_id,
        amount=purchase.credits,
        type=pb.GRANT_TYPE_PURCHASE,
        idempotency_key=purchase.event_id,
        reason=f"checkout {purchase.session_id}",
        metadata={"provider": "stripe", "session": purchase.session_id,
                  "payment_intent": purchase.payment_intent},
    ), metadata=(("authorization", f"Bearer {token}"),), timeout=10)

