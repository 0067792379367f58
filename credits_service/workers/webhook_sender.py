"""The HTTP side of webhooks: one POST per attempt, signed (domain/webhooks.py), bounded by
the attempt timeout; anything but a 2xx answer is a failed attempt."""

from __future__ import annotations

import time

import httpx

from credits_service.domain.webhooks import SIGNATURE_HEADER, DeliveryFailed, Endpoint, signature

_ANSWER_SHOWN_MAX = 200


class HttpSender:
    def __init__(self, timeout_s: float) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False,
            headers={"User-Agent": "credits-service-webhooks"})

    async def send(self, endpoint: Endpoint, body: bytes, event_id: int,
                   event_type: str) -> None:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(endpoint.secret, int(time.time()), body),
            "Credits-Event-Id": str(event_id),
            "Credits-Event-Type": event_type,
        }
        try:
            answer = await self._client.post(endpoint.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise DeliveryFailed("timed out") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= answer.status_code < 300:
            raise DeliveryFailed(
                f"HTTP {answer.status_code}: {answer.text[:_ANSWER_SHOWN_MAX]}")

    async def close(self) -> None:
        await self._client.aclose()
