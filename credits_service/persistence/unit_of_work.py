"""The unit of work: one pooled connection, one transaction, rolled back unless committed.

The engine runs in AUTOCOMMIT mode, so SQLAlchemy never sends BEGIN, COMMIT or a reset ROLLBACK
of its own: the unit of work opens and ends the transaction on the asyncpg connection under the
pooled one, and the repositories' statements run on that asyncpg connection, in that one
transaction. Database failures leave it as StorageError subclasses (errors.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from credits_service.persistence.accounts import AccountRepository
from credits_service.persistence.alerts import AlertRepository
from credits_service.persistence.entries import EntryRepository
from credits_service.persistence.errors import StorageTimeout, translate
from credits_service.persistence.events import EventRepository
from credits_service.persistence.groups import GroupStatements
from credits_service.persistence.idempotency import IdempotencyRepository
from credits_service.persistence.lots import LotRepository
from credits_service.persistence.organizations import OrganizationRepository
from credits_service.persistence.reservations import ReservationRepository
from credits_service.persistence.subscriptions import SubscriptionRepository
from credits_service.persistence.usage import UsageRepository
from credits_service.persistence.webhooks import WebhookRepository

_log = logging.getLogger(__name__)

# A group commit's transaction runs the same few statements over and over: they keep their
# generic plans, as replanning each cost more than running it (bench/README.md). Other
# statements, such as History's with optional filters, are planned for their parameters as
# usual.
_GENERIC_PLANS = "; SET LOCAL plan_cache_mode = force_generic_plan"


class DatabaseClock:
    """The service's clock is the database's (credits_now() in SQL). Tests move it forward
    with `advance`; every later transaction then sees the database clock plus the offset."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset_ms += round(seconds * 1000)


class SqlUnitOfWork:
    """`async with uow:` opens a transaction; leaving without `commit()` rolls it back."""

    accounts: AccountRepository
    entries: EntryRepository
    usage: UsageRepository
    lots: LotRepository
    reservations: ReservationRepository
    idempotency: IdempotencyRepository
    groups: GroupStatements
    subscriptions: SubscriptionRepository
    organizations: OrganizationRepository
    events: EventRepository
    alerts: AlertRepository
    webhooks: WebhookRepository

    def __init__(
        self,
        engine: AsyncEngine,
        statement_timeout_ms: int,
        on_pool_wait: Callable[[float], None] | None = None,
        clock: DatabaseClock | None = None,
        *,
        grouped: bool = False,
        time_remaining_s: float | None = None,
        snapshot: bool = False,
        autocommit: bool = False,
    ) -> None:
        self._engine = engine
        self._grouped = grouped
        self._snapshot = snapshot
        self._autocommit = autocommit
        self._clock = clock
        self._statement_timeout_ms = statement_timeout_ms
        self._time_remaining_s = time_remaining_s
        self._on_pool_wait = on_pool_wait
        self._after_commit: list[Callable[[], None]] = []
        self._broken = False
        self._connection: AsyncConnection | None = None
        self._driver: Any = None  # the asyncpg connection under self._connection
        self._open = False  # a transaction is open on it

    async def __aenter__(self) -> SqlUnitOfWork:
        try:
            waited_from_s = time.perf_counter()
            self._connection = await self._engine.connect()
            if self._on_pool_wait is not None:
                self._on_pool_wait(time.perf_counter() - waited_from_s)
            self._driver = (await self._connection.get_raw_connection()).driver_connection
            if self._autocommit:  # each statement its own transaction: no BEGIN, no COMMIT
                return self._with_repositories()
            # BEGIN sends the SET LOCAL settings in the same round trip.
            await self._driver.execute(
                ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" if self._snapshot
                 else "BEGIN") + (_GENERIC_PLANS if self._grouped else ""))
            self._open = True
            await self._bound_by_call_deadline()
            if self._clock is not None and self._clock.offset_ms:
                await self._driver.execute(
                    "SELECT set_config('credits.clock_offset_ms', $1, true)",
                    str(self._clock.offset_ms))
        except BaseException as exc:
            # A driver failure here (BEGIN or a setting timed out or broke) may leave the
            # connection mid-operation: it is never handed out again.
            self._broken = not isinstance(exc, StorageTimeout)
            await self._close()
            _reraise_translated(exc)
        return self._with_repositories()

    def _with_repositories(self) -> SqlUnitOfWork:
        offset_ms = self._clock.offset_ms if self._clock is not None else 0
        self.accounts = AccountRepository(self._driver, offset_ms)
        self.entries = EntryRepository(self._driver)
        self.usage = UsageRepository(self._driver)
        self.lots = LotRepository(self._driver)
        self.reservations = ReservationRepository(self._driver)
        self.idempotency = IdempotencyRepository(self._driver)
        self.groups = GroupStatements(self._driver)
        self.subscriptions = SubscriptionRepository(self._driver)
        self.organizations = OrganizationRepository(self._driver)
        self.events = EventRepository(self._driver)
        self.alerts = AlertRepository(self._driver)
        self.webhooks = WebhookRepository(self._driver)
        return self

    async def _bound_by_call_deadline(self) -> None:
        """A call with less time left than the statement timeout gets that much, no more: its
        transaction cannot outlive the caller by longer than one statement's grace."""
        remaining_s = self._time_remaining_s
        if remaining_s is None or remaining_s * 1000 >= self._statement_timeout_ms:
            return
        if remaining_s <= 0:
            raise StorageTimeout("the call's deadline passed before its transaction began")
        await self._driver.execute("SELECT set_config('statement_timeout', $1, true)",
                                   str(max(1, int(remaining_s * 1000))))

    async def now(self) -> datetime:
        """The service clock (credits_now(): the database clock plus any test offset)."""
        now: datetime = await self._driver.fetchval("SELECT credits_now()")
        return now

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    async def commit(self) -> None:
        if self._autocommit:
            return  # every statement committed as it ran
        assert self._open, "commit() of a unit of work with no open transaction"
        self._open = False
        try:
            status = await self._driver.execute("COMMIT")
            if status != "COMMIT":  # PostgreSQL ends a failed transaction with ROLLBACK
                raise RuntimeError(f"COMMIT of a failed transaction ended as {status}")
        except BaseException as exc:
            # Whether a COMMIT the connection lost on the way took effect is unknown: the
            # connection is never reused, and the caller gets an error it may retry (its
            # idempotency key makes the retry safe either way).
            self._broken = True
            _reraise_translated(exc)
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the transaction is committed: reporting must not undo that
                _log.exception("after-commit callback failed")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close()
        if exc is not None:
            _reraise_translated(exc)

    async def _close(self) -> None:
        # An open transaction is rolled back here. A connection that failed (or whose state is
        # unknown) is invalidated, so the pool never hands it out again.
        connection, was_open = self._connection, self._open
        self._connection, self._open = None, False
        if connection is None:
            return
        broken = self._broken
        if was_open and not broken:
            try:
                await self._driver.execute("ROLLBACK")
            except BaseException:
                broken = True
        try:
            if broken or self._driver is None or self._driver.is_closed():
                await connection.invalidate()
            await connection.close()
        except Exception:
            pass


def _reraise_translated(exc: BaseException) -> None:
    storage_error = translate(exc) if isinstance(exc, Exception) else None
    if storage_error is not None and storage_error is not exc:
        raise storage_error from exc
    raise exc
