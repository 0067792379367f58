"""Idempotency: the hash of what a caller sent, and keyed work that applies its effect once
per key, in the same transaction as the key's record.

The hash covers the method and exactly what the caller sent (never derived values such as the
default TTL or the time), so a retry with the same request always matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from credits_service.domain import errors
from credits_service.domain.commands import ReserveCommand
from credits_service.persistence.errors import TransientConflict
from credits_service.service import responses
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics

T = TypeVar("T")

# json.dumps(value, sort_keys=True, separators=(",", ":")), without building an encoder per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def request_hash(method: str, command: Any) -> bytes:
    """SHA-256 of the method and the command's fields, in a canonical JSON form: the bytes of
    json.dumps(..., sort_keys=True, separators=(",", ":")), as ever (stored keys keep
    matching). orjson writes the same bytes faster for any ASCII text but DEL (which
    json escapes and orjson does not; every other ASCII character both write alike, escapes
    included). So: orjson's bytes when they are ASCII without DEL, else json's, also for any
    value orjson refuses (an integer beyond 64 bits)."""
    if type(command) is ReserveCommand:  # the hot path: plain()'s result, built directly
        request: Any = {
            "account_id": command.account_id,
            "amount": command.amount,
            "idempotency_key": command.idempotency_key,
            "ttl_ms": command.ttl_ms,
            "metadata": {str(k): v for k, v in command.metadata.items()},
        }
        if command.feature is not None:  # hash_omit_none, as plain() leaves them out
            request["feature"] = command.feature
        if command.units is not None:
            request["units"] = command.units
    else:
        request = responses.plain(command)
    plain = {"method": method, "request": request}
    try:
        canonical = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        canonical = b"\x7f"
    if not canonical.isascii() or b"\x7f" in canonical:
        canonical = _CANONICAL.encode(plain).encode()
    return hashlib.sha256(canonical).digest()


def keyed(
    method: str,
    command: Any,
    key: str,
    scope: str,
    effect: Callable[[UnitOfWork], Awaitable[T | errors.Declined]],
    metrics: LedgerMetrics,
) -> Callable[[UnitOfWork], Awaitable[T | errors.Declined]]:
    """Work for Transactions.run that applies `effect` once per (scope, key): the first call
    claims the key, runs the effect and stores its outcome (a decline too) with the key; a
    retry with the same request replays the stored outcome; another request with the same
    key is declined. An effect that raises, or answers a decline that is not stored (about the
    account itself), rolls back, and the key stays unused."""
    digest = request_hash(method, command)

    async def work(uow: UnitOfWork) -> T | errors.Declined:
        if not await uow.idempotency.claim(scope, key, method, digest):
            stored = await uow.idempotency.get(scope, key)
            if stored is None:  # purged between our insert and read: run again
                raise TransientConflict("idempotency key vanished")
            if stored.request_hash != digest:
                return errors.IdempotencyKeyReused(key)
            assert stored.response is not None, "a committed key always has its response"
            uow.on_commit(lambda: metrics.replayed(method))
            return responses.decode(stored.response)  # type: ignore[return-value]
        outcome = await effect(uow)
        if isinstance(outcome, errors.Declined) and not outcome.stored:
            # Not stored: once the account exists and is active, the same key must work.
            raise outcome
        await uow.idempotency.complete(scope, key, responses.encode(outcome))  # type: ignore[arg-type]
        return outcome

    return work
