"""What a hold does when the service cannot be reached: fail closed (the default: the hold
raises Unavailable or DeadlineExceeded and the work does not run), or fail open within an
allowance.

Failing open trades money for availability. Work done while the service is unreachable is
never charged: it is not recorded anywhere, only logged. The allowance bounds that loss per
client (per process): at most `credits` credits in any `window_s`, holds of an amount only (a
feature's price is the server's to say). With N processes the bound is N times as much.
Choose it as the free usage you accept during an outage.
"""

from __future__ import annotations

import time
from collections import deque


class FailOpen:
    """Let holds of an amount through without the service, up to `credits` credits in any
    `window_s` seconds."""

    def __init__(self, credits: int, window_s: float = 3600.0) -> None:
        if credits < 1 or window_s <= 0:
            raise ValueError("FailOpen: credits of at least 1 over a window above 0 s")
        self.credits = credits
        self.window_s = window_s
        self._taken: deque[tuple[float, int]] = deque()

    def left(self) -> int:
        """The credits still allowed in the current window."""
        now = time.monotonic()
        while self._taken and self._taken[0][0] <= now - self.window_s:
            self._taken.popleft()
        return self.credits - sum(amount for _, amount in self._taken)

    def take(self, amount: int) -> bool:
        """Take `amount` from the allowance if it is there."""
        if amount > self.left():
            return False
        self._taken.append((time.monotonic(), amount))
        return True
