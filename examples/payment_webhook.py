"""A payment provider's webhook that credits a purchase exactly once: the payment's id is the
Grant's idempotency key, so the provider's retries (it sends the same event again until it
gets a 2xx) credit nothing more. The same recipe without the library: docs/payments.md.

    PYTHONPATH=client .venv/bin/python examples/payment_webhook.py   # serves on :8080
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from credits_client import CreditsClient, GrantResult

CREDITS_PER_CENT = 1  # what a cent buys


async def credit_payment(client: CreditsClient, event: dict[str, Any]) -> GrantResult | None:
    """Credit a `payment.succeeded` event's amount to its account, once per payment; other
    events are ignored (None)."""
    if event.get("type") != "payment.succeeded":
        return None
    payment = event["data"]
    return await client.grant(
        payment["account_id"], payment["amount_cents"] * CREDITS_PER_CENT,
        grant_type="PURCHASE", idempotency_key=f"payment:{payment['id']}",
        reason=f"payment {payment['id']}", metadata={"payment_id": payment["id"]})


async def serve(port: int = 8080) -> None:
    """A bare asyncio HTTP endpoint (a real one would check the provider's signature)."""
    client = CreditsClient(os.environ.get("CREDITS_TARGET", "localhost:50051"),
                           token=os.environ.get("CREDITS_TOKEN"))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        granted = await credit_payment(client, json.loads(await reader.readexactly(length)))
        body = json.dumps({"credited": granted is not None}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve())
