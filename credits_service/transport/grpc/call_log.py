"""Every call of ours counted, timed and logged once, with the same fields in every log
format: request_id, method, principal, code, reason, duration_ms, and the account_id or
reservation_id and the hashed idempotency key when the request has them. Tokens and keys are
never logged."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import grpc

from credits_service.telemetry import Metrics

_rpc_log = logging.getLogger("credits_service.rpc")
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_LENGTH_MAX = 128


def request_id_of(metadata: Any) -> str:
    """The caller's x-request-id if it sent a printable one, else a new random id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and value.isprintable() and (
                0 < len(value) <= _REQUEST_ID_LENGTH_MAX):
            return value
    return os.urandom(8).hex()


class CallLog:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # The labelled children, looked up once each instead of on every call
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._timers: dict[str, Any] = {}

    @staticmethod
    def logging() -> bool:
        """Whether calls are logged (request ids are made only then)."""
        return _rpc_log.isEnabledFor(logging.INFO)

    def observe(
        self,
        method: str,
        request: object,
        principal: str | None,
        code: grpc.StatusCode,
        reason: str,
        duration_s: float,
        request_id: str,
    ) -> None:
        counter = self._counters.get((method, code))
        if counter is None:
            counter = self._counters[(method, code)] = self._metrics.rpc_requests.labels(
                method, code.name)
        counter.inc()
        timer = self._timers.get(method)
        if timer is None:
            timer = self._timers[method] = self._metrics.rpc_duration.labels(method)
        timer.observe(duration_s)
        if not _rpc_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "request_id": request_id,
            "method": method,
            "principal": principal,
            "code": code.name,
            "reason": reason or None,
            "duration_ms": round(duration_s * 1000, 3),
        }
        for name in ("account_id", "reservation_id"):
            if value := getattr(request, name, ""):
                fields[name] = value
        if key := getattr(request, "idempotency_key", ""):
            fields["idempotency_key_sha256"] = hashlib.sha256(key.encode()).hexdigest()[:16]
        _rpc_log.info("%s %s %.1fms", method, code.name, duration_s * 1000, extra=fields)
