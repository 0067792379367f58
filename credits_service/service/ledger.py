"""The ledger's use cases. Each runs in one database transaction that includes its
idempotency record, retried as a whole on serialization failures and deadlocks only."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from credits_service.domain import errors
from credits_service.domain.model import (
    BALANCE_MAX,
    BalanceSnapshot,
    CommitCommand,
    CommitResult,
    EntryType,
    GrantCommand,
    GrantResult,
    HistoryPage,
    HistoryQuery,
    ReleaseCommand,
    ReleaseResult,
    Reservation,
    ReservationStatus,
    ReserveCommand,
    ReserveResult,
)
from credits_service.service import idempotency
from credits_service.service.events import LedgerEvents, NoEvents
from credits_service.service.unit_of_work import UnitOfWork, UnitOfWorkFactory

_log = logging.getLogger(__name__)
T = TypeVar("T")
_ENTRY_ID_MAX = 2**63 - 1  # ledger entry ids are bigint


@dataclass(frozen=True, slots=True)
class LedgerLimits:
    hold_ttl_default_ms: int = 300_000
    page_size_default: int = 50
    page_size_max: int = 500
    transaction_attempts_max: int = 5
    balance_max: int = BALANCE_MAX


class Ledger:
    """Use cases of the credits ledger. Safe to share between concurrent calls."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        limits: LedgerLimits,
        events: LedgerEvents | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self._limits = limits
        self._events: LedgerEvents = events or NoEvents()
        self._in_flight: set[asyncio.Task[Any]] = set()

    # --- use cases -----------------------------------------------------------------------

    async def grant(self, command: GrantCommand, actor: str) -> GrantResult:
        """Add credits (creating the account), once per idempotency key."""

        async def effect(uow: UnitOfWork) -> GrantResult | errors.DomainError:
            balance = await uow.accounts.credit(
                command.account_id, command.amount, self._limits.balance_max
            )
            if balance is None:
                current = await uow.accounts.get(command.account_id)
                return errors.BalanceLimitExceeded(
                    command.account_id, current.balance, command.amount, self._limits.balance_max
                )
            entry = await uow.ledger.append(
                account_id=command.account_id,
                entry_type=EntryType.GRANT,
                grant_type=command.grant_type,
                amount=command.amount,
                balance_after=balance.balance,
                reason=command.reason,
                metadata=command.metadata,
                actor=actor,
            )
            uow.on_commit(lambda: self._events.granted(command.amount))
            return GrantResult(entry=entry, balance=balance)

        return await self._idempotent("Grant", command, command.idempotency_key, actor, effect)

    async def check_and_reserve(self, command: ReserveCommand, actor: str) -> ReserveResult:
        """Hold credits if available covers them, once per idempotency key (declines too)."""

        async def effect(uow: UnitOfWork) -> ReserveResult | errors.DomainError:
            balance = await uow.accounts.hold(command.account_id, command.amount)
            if balance is None:
                current = await uow.accounts.get(command.account_id)
                if current is None:
                    return errors.AccountNotFound(command.account_id)
                return errors.InsufficientCredits(
                    command.account_id, current.available, command.amount
                )
            reservation = await uow.reservations.insert(
                reservation_id=str(uuid.uuid4()),
                account_id=command.account_id,
                amount=command.amount,
                ttl_ms=command.ttl_ms or self._limits.hold_ttl_default_ms,
                metadata=command.metadata,
                actor=actor,
            )
            uow.on_commit(self._events.reserved)
            return ReserveResult(reservation=reservation, balance=balance)

        return await self._idempotent(
            "CheckAndReserve", command, command.idempotency_key, actor, effect
        )

    async def commit(self, command: CommitCommand, actor: str) -> CommitResult:
        """Capture a hold for its amount or another; repeating with the same amount replays."""

        async def work(uow: UnitOfWork) -> CommitResult | errors.DomainError:
            locked = await self._lock_deciding_expiry(uow, command.reservation_id)
            if isinstance(locked, errors.DomainError):
                return locked
            amount = command.amount if command.amount is not None else locked.amount
            if locked.status is ReservationStatus.COMMITTED:
                if locked.committed_amount != amount:
                    return errors.ReservationAlreadyCommitted(
                        locked.reservation_id, locked.committed_amount or 0
                    )
                entry = await uow.ledger.usage_of(locked.reservation_id)
                balance = await uow.accounts.get(locked.account_id)
                uow.on_commit(lambda: self._events.replayed("Commit"))
                return CommitResult(reservation=locked, entry=entry, balance=balance)
            if locked.status is ReservationStatus.RELEASED:
                return errors.ReservationReleased(locked.reservation_id)
            balance = await uow.accounts.capture(locked.account_id, locked.amount, amount)
            if balance is None:
                current = await uow.accounts.get(locked.account_id)
                return errors.InsufficientCredits(
                    locked.account_id, current.available, amount - locked.amount
                )
            committed = await uow.reservations.finish(
                locked.reservation_id, ReservationStatus.COMMITTED, committed_amount=amount
            )
            assert committed is not None, "the hold is locked by this transaction"
            entry = await uow.ledger.append(
                account_id=locked.account_id,
                entry_type=EntryType.USAGE,
                amount=-amount,
                balance_after=balance.balance,
                reservation_id=locked.reservation_id,
                metadata=command.metadata,
                actor=actor,
            )
            uow.on_commit(lambda: self._events.committed(amount))
            return CommitResult(reservation=committed, entry=entry, balance=balance)

        return await self._transaction(work)

    async def release(self, command: ReleaseCommand, actor: str) -> ReleaseResult:
        """Void an active hold; releasing a released hold replays."""

        async def work(uow: UnitOfWork) -> ReleaseResult | errors.DomainError:
            locked = await self._lock_deciding_expiry(uow, command.reservation_id)
            if isinstance(locked, errors.DomainError):
                return locked
            if locked.status is ReservationStatus.COMMITTED:
                return errors.ReservationAlreadyCommitted(
                    locked.reservation_id, locked.committed_amount or 0
                )
            if locked.status is ReservationStatus.RELEASED:
                balance = await uow.accounts.get(locked.account_id)
                uow.on_commit(lambda: self._events.replayed("Release"))
                return ReleaseResult(reservation=locked, balance=balance)
            released = await uow.reservations.finish(
                locked.reservation_id, ReservationStatus.RELEASED, release_reason=command.reason
            )
            assert released is not None, "the hold is locked by this transaction"
            balance = await uow.accounts.unhold(locked.account_id, locked.amount)
            uow.on_commit(self._events.released)
            return ReleaseResult(reservation=released, balance=balance)

        return await self._transaction(work)

    async def get_balance(self, account_id: str) -> BalanceSnapshot:
        async def work(uow: UnitOfWork) -> BalanceSnapshot | errors.DomainError:
            balance = await uow.accounts.get(account_id)
            return balance if balance is not None else errors.AccountNotFound(account_id)

        return await self._transaction(work)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """One page of the account's ledger, newest first, keyset-paginated by entry id."""
        page_size = min(query.page_size or self._limits.page_size_default,
                        self._limits.page_size_max)
        filters = _filter_digest(query)
        before = _decode_page_token(query.page_token, filters) if query.page_token else None

        async def work(uow: UnitOfWork) -> HistoryPage | errors.DomainError:
            entries = await uow.ledger.page(
                account_id=query.account_id,
                before_entry_id=before,
                entry_types=query.entry_types,
                start_time=query.start_time,
                end_time=query.end_time,
                limit=page_size + 1,
            )
            if not entries and before is None and await uow.accounts.get(query.account_id) is None:
                return errors.AccountNotFound(query.account_id)
            has_more = len(entries) > page_size
            entries = entries[:page_size]
            token = _encode_page_token(entries[-1].entry_id, filters) if has_more else ""
            return HistoryPage(entries=tuple(entries), next_page_token=token)

        return await self._transaction(work)

    async def expire_due_holds(self, batch_size: int) -> int:
        """Expire ACTIVE holds whose expire_time has passed; returns how many."""

        async def work(uow: UnitOfWork) -> int:
            expired = await uow.reservations.expire_due(batch_size)
            if expired:
                uow.on_commit(lambda: self._events.expired(expired))
            return expired

        return await self._transaction(work)

    async def purge_idempotency_keys(self, older_than_s: float, batch_size: int) -> int:
        async def work(uow: UnitOfWork) -> int:
            return await uow.idempotency.purge(older_than_s, batch_size)

        return await self._transaction(work)

    async def drain(self, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, for transactions still running after their callers left."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout_s)

    # --- transactions --------------------------------------------------------------------

    async def _lock_deciding_expiry(
        self, uow: UnitOfWork, reservation_id: str
    ) -> Reservation | errors.DomainError:
        """Lock the hold. One still ACTIVE past its expire_time (database clock) is expired
        here, as the sweeper would, so a late Commit or Release can never win over expiry."""
        locked = await uow.reservations.lock(reservation_id)
        if locked is None:
            return errors.ReservationNotFound(reservation_id)
        reservation, is_due = locked
        if reservation.status is ReservationStatus.ACTIVE and is_due:
            expired = await uow.reservations.finish(reservation_id, ReservationStatus.EXPIRED)
            assert expired is not None, "the hold is locked by this transaction"
            await uow.accounts.unhold(reservation.account_id, reservation.amount)
            uow.on_commit(lambda: self._events.expired(1))
            return errors.ReservationExpired(reservation_id)
        if reservation.status is ReservationStatus.EXPIRED:
            return errors.ReservationExpired(reservation_id)
        return reservation

    async def _idempotent(
        self,
        method: str,
        command: Any,
        key: str,
        scope: str,
        effect: Callable[[UnitOfWork], Awaitable[T | errors.DomainError]],
    ) -> T:
        digest = idempotency.request_hash(method, command)

        async def work(uow: UnitOfWork) -> Any:
            if not await uow.idempotency.claim(scope, key, method, digest):
                stored = await uow.idempotency.get(scope, key)
                if stored is None:  # purged between our insert and read: run again
                    raise errors.TransientConflict("idempotency key vanished")
                stored_digest, response = stored
                if stored_digest != digest:
                    return errors.IdempotencyKeyReused(key)
                assert response is not None, "a committed key always has its response"
                uow.on_commit(lambda: self._events.replayed(method))
                return idempotency.decode(response)
            outcome = await effect(uow)
            await uow.idempotency.complete(scope, key, idempotency.encode(outcome))
            return outcome

        return await self._transaction(work)

    async def _transaction(self, work: Callable[[UnitOfWork], Awaitable[Any]]) -> Any:
        """Run `work` in one committed transaction and return its result, raising a domain
        decline only after committing (a decline may still have written, e.g. an expiry or an
        idempotency record). Once begun, the transaction runs to its end even if the caller is
        cancelled, so it never stops half way on the client side: it is bounded instead by the
        database timeouts, lowered to the caller's deadline when that is nearer (see
        SqlUnitOfWork), and by the client-side command timeout."""
        task = asyncio.ensure_future(self._with_retries(work))
        self._in_flight.add(task)
        task.add_done_callback(_forget(self._in_flight))
        outcome = await asyncio.shield(task)
        if isinstance(outcome, errors.DomainError):
            raise outcome
        return outcome

    async def _with_retries(self, work: Callable[[UnitOfWork], Awaitable[Any]]) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(errors.TransientConflict),
            stop=stop_after_attempt(self._limits.transaction_attempts_max),
            wait=wait_random_exponential(multiplier=0.005, max=0.1),
            before_sleep=lambda _: self._events.transaction_retried(),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with self._uow_factory() as uow:
                    outcome = await work(uow)
                    await uow.commit()
        return outcome


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an abandoned call's failure is logged once, not lost.
            _log.debug("transaction failed: %r", task.exception())

    return done


def _filter_digest(query: HistoryQuery) -> str:
    canonical = json.dumps(
        [
            query.account_id,
            sorted(t.value for t in query.entry_types),
            query.start_time.isoformat() if query.start_time else None,
            query.end_time.isoformat() if query.end_time else None,
        ]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode_page_token(last_entry_id: int, filters: str) -> str:
    raw = json.dumps({"v": 1, "after": last_entry_id, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_page_token(token: str, filters: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after = data["after"]
        # type() is int: JSON true is a bool, and bool is an int in Python.
        if (data["v"] != 1 or data["f"] != filters or type(after) is not int
                or not 1 <= after <= _ENTRY_ID_MAX):
            raise ValueError(token)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise errors.InvalidPageToken() from exc
    return after
