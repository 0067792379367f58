"""The deadline of the call being served, so the database work it starts ends with it.

Transport sets it from the gRPC deadline; the transaction runner reads it when a transaction
begins, and storage lowers that transaction's statement timeout to the time left. A context
variable, so it follows the call into the task that runs its transaction (tasks copy the
context they start in); a group transaction starts in a fresh context and has none.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_deadline_s: ContextVar[float | None] = ContextVar("call_deadline_s", default=None)


def set_call_deadline(time_remaining_s: float | None) -> Token[float | None]:
    """Record the current call's deadline, `time_remaining_s` from now (None: no deadline)."""
    deadline_s = None if time_remaining_s is None else time.monotonic() + time_remaining_s
    return _deadline_s.set(deadline_s)


def reset_call_deadline(token: Token[float | None]) -> None:
    _deadline_s.reset(token)


def time_remaining_s() -> float | None:
    """Seconds left before the current call's deadline; None when it has none."""
    deadline_s = _deadline_s.get()
    return None if deadline_s is None else deadline_s - time.monotonic()
