"""A hold as an async context manager (CreditsClient.hold)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from credits_client import types
from credits_client.errors import CreditsError, DeadlineExceeded, Unavailable

if TYPE_CHECKING:
    from credits_client.client import CreditsClient

_log = logging.getLogger(__name__)


class Hold:
    """Places the hold on entering; on leaving, commits it (the estimate, or what
    `commit()` set) if the block succeeded and releases it if the block raised. While the
    block runs, the hold is extended every third of its TTL, so long work never loses it."""

    def __init__(
        self, client: CreditsClient, account_id: str, *, amount: int | None,
        feature: str | None, units: int | None, ttl_s: float,
        metadata: Mapping[str, str] | None,
    ) -> None:
        self._client = client
        self.account_id = account_id
        self._amount, self._feature, self._units = amount, feature, units
        self.ttl_s = ttl_s
        self._metadata = metadata
        self._actual: dict[str, int] = {}
        self._keeping: asyncio.Task[None] | None = None
        self.reservation: types.Reservation | None = None
        self.result: types.HoldResult | None = None  # the Commit's or Release's answer
        self.offline = False  # let through without the service (fail open): not charged

    @property
    def reservation_id(self) -> str:
        assert self.reservation is not None, "the hold is placed when the block starts"
        return self.reservation.reservation_id

    def commit(self, *, units: int | None = None, amount: int | None = None) -> None:
        """What to commit when the block ends: the actual `units` (of a feature's hold) or
        `amount` of credits, instead of the estimate."""
        if (units is None) == (amount is None):
            raise ValueError("commit: units or amount")
        self._actual = {"units": units} if units is not None else {"amount": amount or 0}

    async def __aenter__(self) -> Hold:
        try:
            placed = await self._client.reserve(
                self.account_id, amount=self._amount, feature=self._feature,
                units=self._units, ttl_s=self.ttl_s, metadata=self._metadata)
        except (Unavailable, DeadlineExceeded) as down:
            allowance = self._client.fail_open
            if allowance is None or self._amount is None or not allowance.take(self._amount):
                raise
            _log.warning(
                "credits service unreachable (%s): failing open, %d credits of account %s "
                "not charged; %d left of the allowance", down.reason, self._amount,
                self.account_id, allowance.left())
            self.offline = True
            return self
        self.reservation = placed.reservation
        self._keeping = asyncio.create_task(self._keep())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._keeping is not None:
            self._keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping
        if self.offline:
            return
        if exc is None:
            self.result = await self._client.commit(self.reservation_id, **self._actual)
            return
        try:
            self.result = await self._client.release(
                self.reservation_id, reason=f"the work failed: {type(exc).__name__}"[:256])
        except CreditsError as failed:
            # The work's error is the one to raise; the hold expires by its TTL anyway
            _log.warning("releasing hold %s after %s failed: %s", self.reservation_id,
                         type(exc).__name__, failed)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self._client.extend(self.reservation_id, self.ttl_s)
            except CreditsError as failed:
                _log.warning("extending hold %s failed: %s", self.reservation_id, failed)


def hold_of_call(
    signature: inspect.Signature, account: str | Callable[..., str],
    options: Mapping[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """For a metered call: the account to hold on (the argument `account` names, or what it
    computes from the arguments) and the hold's options, those given as functions computed
    from the arguments."""
    account_id = (account(*args, **kwargs) if callable(account)
                  else signature.bind_partial(*args, **kwargs).arguments[account])
    return account_id, {name: value(*args, **kwargs) if callable(value) else value
                        for name, value in options.items()}
