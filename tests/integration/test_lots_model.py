"""Model-based test of credit lots: a Hypothesis state machine drives the real gRPC server (and
its PostgreSQL) with grants, reservations, commits, releases, extensions and clock moves, mirrors
every call in a pure Python model of lots, and after every step checks the model against the
replies, the tables and GetBalance.

Time: every duration is a whole number of hours and the service clock only moves by
`clock.advance`, so the few real seconds an example takes never change which event is due: in
the model an event is due once the model time has reached it. Lot expire_times are set as the
example's start plus whole hours, so lots granted at different times can expire at exactly the
same instant (a tie that the oldest lot wins).

The state machine is synchronous and runs in a worker thread; each call is sent to the server
on the test's event loop (as in test_invalid_input.py).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from credits.v1 import credits_pb2 as pb
from tests import ledger_checks
from tests.grpc_errors import RpcError, unpack
from tests.support.calls import commit_request, grant_request, release_request, reserve_request
from tests.support.messages import draws, seconds

HOUR_S = 3600
ACCOUNTS = ("m-a", "m-b")
SERVICE_NOW = "SELECT now() + $1 * interval '1 millisecond'"
DUE = """
    SELECT (SELECT count(*) FROM reservations
             WHERE status = 'ACTIVE' AND expire_time <= now() + $1 * interval '1 millisecond')
         + (SELECT count(*) FROM credit_lots
             WHERE expired_time IS NULL AND expire_time <= now() + $1 * interval '1 millisecond')
"""
RPC_TIMEOUT_S = 10
EXPIRING_WITHIN_H = 6  # GetBalance's expiring_amount window; lots are often granted for 6 h
STEP_TIMEOUT_S = 30
# A reservation's expire_time is set from the server clock, which runs a few real seconds ahead of
# the model's whole hours; never by as much as this.
DRIFT_MAX_S = 600

ACTIVE, COMMITTED, RELEASED, EXPIRED = "ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"

# Outcomes the default run must reach at least once (counted over all its examples).
MUST_SEE = (
    "reserve", "reserve declined", "reserve unknown account",
    "commit equal", "commit default", "commit smaller", "commit larger",
    "commit larger declined", "commit expired", "commit replay", "commit other amount",
    "commit released", "release", "release expired", "release replay", "release committed",
    "extend", "extend expired", "reservation expired", "lot written off", "given back written off",
    "consumed from an expired lot", "lot expiry tie",
)


# --- the model -------------------------------------------------------------------------------


@dataclass
class ModelLot:
    lot_id: str
    account: str
    seq: int  # creation order: the oldest lot goes first among equals
    priority: int
    expire_h: int | None  # model hour at which it expires; None: never
    amount: int
    remaining: int
    held: int = 0
    expired: bool = False

    def order(self) -> tuple[int, bool, int, int]:
        """Consumption order: lower priority, soonest expiry (never last), oldest."""
        return (self.priority, self.expire_h is None, self.expire_h or 0, self.seq)


@dataclass
class ModelReservation:
    reservation_id: str
    account: str
    amount: int
    created_h: int
    expire_h: int
    draws: list[tuple[str, int]]  # (lot_id, held), in consumption order
    status: str = ACTIVE
    committed_amount: int | None = None
    settled: list[tuple[str, int, int]] = field(default_factory=list)  # draws after Commit


@dataclass
class ModelAccount:
    granted: int = 0
    used: int = 0
    expired: int = 0

    @property
    def balance(self) -> int:
        return self.granted - self.used - self.expired


@dataclass(frozen=True)
class Declined:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)


class Model:
    """Credit lots as the proto and README describe them, in whole model hours."""

    def __init__(self, lifetime_max_h: int, seen: collections.Counter[str]) -> None:
        self.now_h = 0
        self.lifetime_max_h = lifetime_max_h
        self.seen = seen
        self.accounts: dict[str, ModelAccount] = {}
        self.lots: dict[str, ModelLot] = {}
        self.reservations: dict[str, ModelReservation] = {}

    # queries

    def lots_of(self, account: str) -> list[ModelLot]:
        return sorted((lot for lot in self.lots.values() if lot.account == account),
                      key=ModelLot.order)

    def available(self, account: str) -> int:
        return sum(lot.remaining - lot.held for lot in self.lots_of(account) if not lot.expired)

    def reserved(self, account: str) -> int:
        return sum(r.amount for r in self.reservations.values()
                   if r.account == account and r.status == ACTIVE)

    def active_count(self, account: str) -> int:
        return sum(1 for r in self.reservations.values()
                   if r.account == account and r.status == ACTIVE)

    def take(self, account: str, amount: int) -> list[tuple[str, int]] | None:
        """Free credits of unexpired lots in consumption order, up to `amount`."""
        taken, left = [], amount
        for lot in self.lots_of(account):
            free = lot.remaining - lot.held
            if left == 0:
                break
            if lot.expired or free <= 0:
                continue
            part = min(free, left)
            taken.append((lot.lot_id, part))
            left -= part
        return taken if left == 0 else None

    def check(self) -> None:
        for lot in self.lots.values():
            assert 0 <= lot.held <= lot.remaining <= lot.amount, lot
            if lot.expired:
                assert lot.remaining == lot.held, lot
        for account_id, account in self.accounts.items():
            assert account.balance == sum(lot.remaining for lot in self.lots_of(account_id))
            assert self.reserved(account_id) == sum(lot.held for lot in self.lots_of(account_id))

    # changes

    def grant(self, lot_id: str, account: str, amount: int, priority: int,
              expire_h: int | None) -> None:
        if expire_h is not None and any(
                lot.expire_h == expire_h and lot.priority == priority and lot.account == account
                for lot in self.lots.values()):
            self.seen["lot expiry tie"] += 1
        self.accounts.setdefault(account, ModelAccount()).granted += amount
        self.lots[lot_id] = ModelLot(lot_id, account, len(self.lots), priority, expire_h, amount,
                                     amount)

    def reserve(self, account: str, amount: int) -> list[tuple[str, int]] | Declined:
        if account not in self.accounts:
            self.seen["reserve unknown account"] += 1
            return Declined(grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
        available = self.available(account)
        if available < amount:
            self.seen["reserve declined"] += 1
            return Declined(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                            {"available": str(available), "requested": str(amount)})
        draws = self.take(account, amount)
        assert draws is not None
        for lot_id, part in draws:
            self.lots[lot_id].held += part
        self.seen["reserve"] += 1
        return draws

    def add_reservation(self, reservation: ModelReservation) -> None:
        self.reservations[reservation.reservation_id] = reservation

    def _finished(self, reservation: ModelReservation, verb: str) -> Declined | None:
        if reservation.status == EXPIRED:
            self.seen[f"{verb} expired"] += 1
            return Declined(grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED")
        if reservation.status == RELEASED and verb != "release":
            self.seen[f"{verb} released"] += 1
            return Declined(grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED")
        if reservation.status == COMMITTED and verb != "commit":
            self.seen[f"{verb} committed"] += 1
            return Declined(grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED",
                            {"committedAmount": str(reservation.committed_amount)})
        return None

    def _give_back(self, reservation: ModelReservation, consumed: dict[str, int]) -> None:
        """End the reservation's draws: what was not consumed goes back to its lot, and is written
        off at once if the lot has expired."""
        account = self.accounts[reservation.account]
        for lot_id, held in reservation.draws:
            lot = self.lots[lot_id]
            used = consumed.get(lot_id, 0)
            lot.held -= held
            lot.remaining -= used
            if used and lot.expired:
                self.seen["consumed from an expired lot"] += 1
            back = held - used
            if back and lot.expired:
                lot.remaining -= back
                account.expired += back
                self.seen["given back written off"] += 1

    def commit(self, reservation: ModelReservation, amount: int, kind: str
               ) -> list[tuple[str, int, int]] | Declined:
        """The reservation's draws after Commit, as (lot_id, held, consumed) in consumption
        order."""
        declined = self._finished(reservation, "commit")
        if declined is not None:
            return declined
        if reservation.status == COMMITTED:
            if reservation.committed_amount != amount:
                self.seen["commit other amount"] += 1
                return Declined(grpc.StatusCode.FAILED_PRECONDITION,
                                "RESERVATION_ALREADY_COMMITTED",
                                {"committedAmount": str(reservation.committed_amount)})
            self.seen["commit replay"] += 1
            return reservation.settled
        consumed: dict[str, int] = {}
        left = amount
        for lot_id, held in reservation.draws:
            consumed[lot_id] = min(held, left)
            left -= consumed[lot_id]
        excess: list[tuple[str, int]] = []
        if left:
            taken = self.take(reservation.account, left)
            if taken is None:
                self.seen["commit larger declined"] += 1
                return Declined(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                                {"available": str(self.available(reservation.account)),
                                 "requested": str(left)})
            excess = taken
        self.seen[f"commit {kind}"] += 1
        self._give_back(reservation, consumed)
        for lot_id, part in excess:
            self.lots[lot_id].remaining -= part
            consumed[lot_id] = consumed.get(lot_id, 0) + part
        self.accounts[reservation.account].used += amount
        held = dict(reservation.draws)
        reservation.status, reservation.committed_amount = COMMITTED, amount
        reservation.settled = [(lot_id, held.get(lot_id, 0), consumed[lot_id])
                               for lot_id in sorted(consumed, key=lambda i: self.lots[i].order())]
        return reservation.settled

    def release(self, reservation: ModelReservation) -> Declined | None:
        declined = self._finished(reservation, "release")
        if declined is not None:
            return declined
        if reservation.status == RELEASED:
            self.seen["release replay"] += 1
            return None
        self.seen["release"] += 1
        self._give_back(reservation, {})
        reservation.status = RELEASED
        return None

    def extend(self, reservation: ModelReservation, ttl_h: int) -> Declined | None:
        declined = self._finished(reservation, "extend")
        if declined is not None:
            return declined
        self.seen["extend"] += 1
        capped = min(self.now_h + ttl_h, reservation.created_h + self.lifetime_max_h)
        if capped == reservation.created_h + self.lifetime_max_h and capped > reservation.expire_h:
            self.seen["extend capped"] += 1
        reservation.expire_h = max(reservation.expire_h, capped)
        return None

    def advance(self, hours: int) -> None:
        """Move time; due reservations expire (giving back), due lots are written off."""
        self.now_h += hours
        for reservation in self.reservations.values():
            if reservation.status == ACTIVE and self.now_h >= reservation.expire_h:
                self.seen["reservation expired"] += 1
                self._give_back(reservation, {})
                reservation.status = EXPIRED
        for lot in self.lots.values():
            if lot.expire_h is not None and not lot.expired and self.now_h >= lot.expire_h:
                self.seen["lot written off"] += 1
                self.accounts[lot.account].expired += lot.remaining - lot.held
                lot.remaining, lot.expired = lot.held, True


# --- the machine -----------------------------------------------------------------------------


@dataclass
class Env:
    loop: asyncio.AbstractEventLoop
    app: Any
    stub: Any
    db: Any
    clock: Any
    lifetime_max_h: int
    seen: collections.Counter[str] = field(default_factory=collections.Counter)


def _amount_of(spec: tuple[str, int], base: int) -> int:
    """('n', n) is n; ('rel', d) is base + d, at least 1."""
    kind, value = spec
    return value if kind == "n" else max(1, base + value)


# Mostly the first account; the second one starts unknown (NOT_FOUND) until granted to.
accounts = st.sampled_from((ACCOUNTS[0], ACCOUNTS[0], ACCOUNTS[0], ACCOUNTS[1]))
grant_amounts = st.integers(1, 50)
# Hypothesis favours small numbers; lead with values that make lots expire under live reservations.
expiries = st.one_of(st.none(), st.sampled_from([2, 6]), st.integers(1, 48))
reservation_ttls = st.one_of(st.sampled_from([24, 8]), st.integers(1, 24))
advances = st.one_of(st.sampled_from([3, 7]), st.integers(1, 30))
# Few distinct priorities, so ties are common; None is the default, 50.
priorities = st.one_of(st.none(), st.sampled_from([0, 1, 50, 100]), st.integers(0, 100))
# Relative to what is available (reserve) or held (commit): boundaries and just past them.
reserve_amounts = st.one_of(st.integers(-3, 3).map(lambda d: ("rel", d)),
                            st.integers(1, 25).map(lambda n: ("n", n)))
# Which reservation a commit, release or extend acts on: the `pick`th (modulo) of the reservations
# of that kind, in creation order; an active reservation if there is none of that kind, else any
# reservation.
RESERVATION_KINDS = ("active", "active over an expired lot", "expired", "finished")
reservation_kinds = st.sampled_from(RESERVATION_KINDS)
picks = st.integers(0, 7)


class LotsMachine(RuleBasedStateMachine):
    """Bound to one test's server, database and clock by `_machine(env)`."""

    env: Env

    def __init__(self) -> None:
        super().__init__()
        self.ok = False  # set once a step and its checks passed; teardown checks only then
        self.model = Model(self.env.lifetime_max_h, self.env.seen)
        self.base: datetime = self._run(self._reset())

    # plumbing

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.env.loop).result(STEP_TIMEOUT_S)

    def _call(self, call: Callable[[], Awaitable[Any]]) -> tuple[Any, RpcError | None]:
        async def send() -> tuple[Any, RpcError | None]:
            try:
                return await call(), None
            except grpc.aio.AioRpcError as error:
                return None, unpack(error)

        return self._run(send())

    def _step(self) -> None:
        self.ok = False

    async def _reset(self) -> datetime:
        await ledger_checks.empty_ledger(self.env.db)
        return await self.env.db.fetchval(SERVICE_NOW, self.env.clock.offset_ms)

    def _stamp(self, hour: int) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(self.base + timedelta(hours=hour))
        return stamp

    @staticmethod
    def _expect_declined(error: RpcError | None, expected: Declined, reply: Any) -> None:
        assert error is not None, f"expected {expected.reason}, got {reply}"
        assert (error.code, error.reason) == (expected.code, expected.reason), error
        for key, value in expected.metadata.items():
            assert error.metadata.get(key) == value, (key, expected, error)

    def _reservation(self, which: str, pick: int) -> ModelReservation:
        m = self.model
        reservations = list(m.reservations.values())
        kind = {
            "active": lambda r: r.status == ACTIVE,
            "expired": lambda r: r.status == EXPIRED,
            "finished": lambda r: r.status in (COMMITTED, RELEASED),
            "active over an expired lot": lambda r: r.status == ACTIVE and any(
                m.lots[lot_id].expired for lot_id, _ in r.draws),
        }[which]
        chosen = ([r for r in reservations if kind(r)]
                  or [r for r in reservations if r.status == ACTIVE] or reservations)
        return chosen[pick % len(chosen)]

    def _has_reservations(self) -> bool:
        return bool(self.model.reservations)

    def _something_can_expire(self) -> bool:
        return any(reservation.status == ACTIVE
                   for reservation in self.model.reservations.values()) or any(
            lot.expire_h is not None and not lot.expired for lot in self.model.lots.values())

    def _expect_balance(self, balance: pb.Balance, account: str) -> None:
        m = self.model
        assert (balance.balance, balance.reserved, balance.available) == (
            m.accounts[account].balance, m.reserved(account),
            m.accounts[account].balance - m.reserved(account)), balance

    # rules

    @initialize(lots=st.lists(st.tuples(grant_amounts, expiries, priorities), min_size=1,
                              max_size=4))
    def seed(self, lots: list[tuple[int, int | None, int | None]]) -> None:
        """Start with a few lots on the first account, so most steps have credits to use."""
        for amount, expires_in_h, priority in lots:
            self.grant(ACCOUNTS[0], amount, expires_in_h, priority, pb.GRANT_TYPE_PURCHASE)

    @rule(account=accounts, amount=grant_amounts, expires_in_h=expiries, priority=priorities,
          grant_type=st.sampled_from([pb.GRANT_TYPE_PURCHASE, pb.GRANT_TYPE_PROMO]))
    def grant(self, account: str, amount: int, expires_in_h: int | None,
              priority: int | None, grant_type: int) -> None:
        self._step()
        expire_h = None if expires_in_h is None else self.model.now_h + expires_in_h
        request = grant_request(
            account, amount, grant_type=grant_type, priority=priority,
            expire_time=None if expire_h is None else self._stamp(expire_h))
        reply, error = self._call(lambda: self.env.stub.Grant(request, timeout=RPC_TIMEOUT_S))
        assert error is None, error
        lot = reply.lot
        self.model.grant(lot.lot_id, account, amount, 50 if priority is None else priority,
                         expire_h)
        assert (lot.amount, lot.remaining, lot.held, lot.expired, lot.priority) == (
            amount, amount, 0, False, self.model.lots[lot.lot_id].priority), lot
        assert (lot.expire_time if lot.HasField("expire_time") else None) == (
            None if expire_h is None else self._stamp(expire_h))
        self._expect_balance(reply.balance, account)

    @rule(account=accounts, amount=reserve_amounts, ttl_h=reservation_ttls)
    def reserve(self, account: str, amount: tuple[str, int], ttl_h: int) -> None:
        self._step()
        value = _amount_of(amount, self.model.available(account)
                           if account in self.model.accounts else 0)
        request = reserve_request(account, value, ttl_s=ttl_h * HOUR_S)
        reply, error = self._call(
            lambda: self.env.stub.CheckAndReserve(request, timeout=RPC_TIMEOUT_S))
        expected = self.model.reserve(account, value)
        if isinstance(expected, Declined):
            self._expect_declined(error, expected, reply)
            return
        assert error is None, error
        reservation = reply.reservation
        assert draws(reservation) == [(lot_id, part, 0) for lot_id, part in expected], (
            draws(reservation), expected)
        assert (reservation.amount, reservation.status) == (value, pb.RESERVATION_STATUS_ACTIVE)
        assert seconds(reservation.expire_time) - seconds(reservation.create_time) == ttl_h * HOUR_S
        self.model.add_reservation(ModelReservation(
            reservation.reservation_id, account, value, self.model.now_h,
            self.model.now_h + ttl_h, expected))
        self._expect_balance(reply.balance, account)

    @precondition(_has_reservations)
    @rule(which=reservation_kinds, pick=picks, amount=st.one_of(st.none(), st.integers(1, 60)))
    def commit(self, which: str, pick: int, amount: int | None) -> None:
        """Commit for the held amount (amount unset) or for any amount."""
        self._step()
        self._commit(self._reservation(which, pick), amount)

    @precondition(_has_reservations)
    @rule(which=reservation_kinds, pick=picks, by=st.integers(0, 5))
    def commit_less(self, which: str, pick: int, by: int) -> None:
        """Commit for the held amount given explicitly (by=0) or less (at least 1)."""
        self._step()
        reservation = self._reservation(which, pick)
        self._commit(reservation, max(1, reservation.amount - by))

    @precondition(_has_reservations)
    @rule(which=reservation_kinds, pick=picks, by=st.integers(1, 40))
    def commit_more(self, which: str, pick: int, by: int) -> None:
        """Commit for more than held: the excess comes from free credits, often of several
        lots, or the commit is declined."""
        self._step()
        reservation = self._reservation(which, pick)
        self._commit(reservation, reservation.amount + by)

    def _commit(self, reservation: ModelReservation, amount: int | None) -> None:
        request = commit_request(reservation.reservation_id, amount)
        value = reservation.amount if amount is None else amount
        kind = ("default" if amount is None else "equal" if value == reservation.amount
                else "smaller" if value < reservation.amount else "larger")
        reply, error = self._call(lambda: self.env.stub.Commit(request, timeout=RPC_TIMEOUT_S))
        expected = self.model.commit(reservation, value, kind)
        if isinstance(expected, Declined):
            self._expect_declined(error, expected, reply)
            return
        assert error is None, error
        committed = reply.reservation
        assert (committed.status, committed.committed_amount) == (
            pb.RESERVATION_STATUS_COMMITTED, value), committed
        assert draws(committed) == expected, (draws(committed), expected)
        assert reply.entry.amount == -value
        self._expect_balance(reply.balance, reservation.account)

    @precondition(_has_reservations)
    @rule(which=reservation_kinds, pick=picks)
    def release(self, which: str, pick: int) -> None:
        self._step()
        reservation = self._reservation(which, pick)
        request = release_request(reservation.reservation_id, "model")
        reply, error = self._call(lambda: self.env.stub.Release(request, timeout=RPC_TIMEOUT_S))
        expected = self.model.release(reservation)
        if isinstance(expected, Declined):
            self._expect_declined(error, expected, reply)
            return
        assert error is None, error
        assert reply.reservation.status == pb.RESERVATION_STATUS_RELEASED
        assert draws(reply.reservation) == [(lot_id, held, 0) for lot_id, held in reservation.draws]
        self._expect_balance(reply.balance, reservation.account)

    @precondition(_has_reservations)
    @rule(which=reservation_kinds, pick=picks, ttl_h=reservation_ttls)
    def extend(self, which: str, pick: int, ttl_h: int) -> None:
        self._step()
        reservation = self._reservation(which, pick)
        request = pb.ExtendReservationRequest(reservation_id=reservation.reservation_id,
                                              ttl=Duration(seconds=ttl_h * HOUR_S))
        reply, error = self._call(
            lambda: self.env.stub.ExtendReservation(request, timeout=RPC_TIMEOUT_S))
        expected = self.model.extend(reservation, ttl_h)
        if isinstance(expected, Declined):
            self._expect_declined(error, expected, reply)
            return
        assert error is None, error
        extended = reply.reservation
        assert extended.status == pb.RESERVATION_STATUS_ACTIVE
        assert draws(extended) == [(lot_id, held, 0) for lot_id, held in reservation.draws]
        lifetime = seconds(extended.expire_time) - seconds(extended.create_time)
        model_lifetime = (reservation.expire_h - reservation.created_h) * HOUR_S
        assert 0 <= lifetime - model_lifetime < DRIFT_MAX_S, (lifetime, model_lifetime)

    @precondition(_something_can_expire)
    @rule(hours=advances)
    def advance(self, hours: int) -> None:
        self._step()
        self._run(self._advance(hours))
        self.model.advance(hours)

    async def _advance(self, hours: int) -> None:
        """Move the service clock, then sweep until nothing is due. The background sweeper may
        be expiring the same reservations (it skips what it finds locked, and so does sweep_once):
        wait for its transaction rather than read around it."""
        env = self.env
        env.clock.advance(hours * HOUR_S)
        for _ in range(250):
            await env.app.sweeper.sweep_once()
            if not await env.db.fetchval(DUE, env.clock.offset_ms):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("due reservations or lots were never swept")

    # checks after every step

    @invariant()
    def matches_the_service(self) -> None:
        self.ok = False
        self.model.check()
        lots, ledger, statuses, reports = self._run(self._observe())
        m = self.model
        assert lots == {lot.lot_id: (lot.account, lot.remaining, lot.held, lot.expired)
                        for lot in m.lots.values()}, "credit_lots differ from the model"
        assert statuses == {r.reservation_id: r.status for r in m.reservations.values()}
        assert ledger == {a: account.balance for a, account in m.accounts.items()}, ledger
        assert set(reports) == set(m.accounts)
        for account_id, report in reports.items():
            account, balance = m.accounts[account_id], report.balance
            assert (balance.balance, balance.reserved, balance.available,
                    balance.active_reservation_count, balance.lifetime_granted,
                    balance.lifetime_used, balance.lifetime_expired) == (
                account.balance, m.reserved(account_id), m.available(account_id),
                m.active_count(account_id), account.granted, account.used, account.expired,
            ), (account_id, balance)
            assert min(balance.balance, balance.reserved, balance.available) >= 0
            listed = [(lot.lot_id, lot.remaining, lot.held, lot.expired, lot.priority,
                       lot.expire_time if lot.HasField("expire_time") else None)
                      for lot in report.lots]
            assert listed == [
                (lot.lot_id, lot.remaining, lot.held, lot.expired, lot.priority,
                 None if lot.expire_h is None else self._stamp(lot.expire_h))
                for lot in m.lots_of(account_id) if lot.remaining > 0
            ], (account_id, listed)
            assert not report.lots_truncated
            assert report.expiring_amount == sum(
                lot.remaining - lot.held for lot in m.lots_of(account_id)
                if not lot.expired and lot.expire_h is not None
                and lot.expire_h <= m.now_h + EXPIRING_WITHIN_H), (account_id, report)
        self.ok = True

    async def _observe(self) -> tuple[dict, dict, dict, dict]:
        db = self.env.db
        lots = {
            str(row["lot_id"]): (row["account_id"], row["remaining"], row["held"],
                                 row["expired"])
            for row in await db.fetch(
                "SELECT lot_id, account_id, remaining, held, expired_time IS NOT NULL AS expired "
                "FROM credit_lots")
        }
        ledger = {row[0]: row[1] for row in await db.fetch(
            "SELECT account_id, sum(amount) FROM ledger_entries GROUP BY 1")}
        statuses = {row[0]: row[1] for row in await db.fetch(
            "SELECT reservation_id::text, status FROM reservations")}
        reports = {}
        for account_id in ACCOUNTS:
            try:
                reports[account_id] = await self.env.stub.GetBalance(
                    pb.GetBalanceRequest(
                        account_id=account_id,
                        expiring_within=Duration(seconds=EXPIRING_WITHIN_H * HOUR_S)),
                    timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                assert unpack(error).reason == "ACCOUNT_NOT_FOUND", error
        return lots, ledger, statuses, reports

    def teardown(self) -> None:
        if self.ok:  # after a failure, report that failure, not a follow-on one
            self._run(ledger_checks.assert_invariants(self.env.db))


def _machine(env: Env) -> type[LotsMachine]:
    return type("LotsModel", (LotsMachine,), {"env": env})


async def _run_machine(app, stub, db, clock, test_settings, run_settings: settings) -> Env:
    env = Env(asyncio.get_running_loop(), app, stub, db, clock,
              round(test_settings.ledger.reservation_lifetime_max_s) // HOUR_S)
    machine = _machine(env)
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=run_settings)
    return env


# Every example runs against the real server, so shrinking a failure takes minutes; the explain
# phase (which reruns the minimal example many times more) is left out.
PHASES = (Phase.explicit, Phase.generate, Phase.shrink)


@pytest.mark.timeout(1200)  # passing takes well under a minute; this is room to shrink a failure
async def test_lots_match_the_model(app, stub, db, clock, test_settings):
    env = await _run_machine(app, stub, db, clock, test_settings, settings(
        max_examples=50, stateful_step_count=50, deadline=None, derandomize=True,
        database=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow]))
    missing = [outcome for outcome in MUST_SEE if not env.seen[outcome]]
    assert not missing, f"never exercised: {missing}; seen: {dict(env.seen)}"


@pytest.mark.soak
@pytest.mark.timeout(3 * 3600)
async def test_lots_match_the_model_soak(app, stub, db, clock, test_settings):
    env = await _run_machine(app, stub, db, clock, test_settings, settings(
        max_examples=1000, stateful_step_count=100, deadline=None, database=None,
        phases=PHASES, suppress_health_check=[HealthCheck.too_slow]))
    missing = [outcome for outcome in MUST_SEE if not env.seen[outcome]]
    assert not missing, f"never exercised: {missing}; seen: {dict(env.seen)}"
