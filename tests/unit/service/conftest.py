"""Fixtures of the service layer's unit tests: a Ledger over the in-memory fake storage
(tests/support/fake_storage.py), and the ledger's invariants checked after every test.

These prove the rules in milliseconds; the Postgres tests (tests/integration/) stay the proof
of the SQL, the races and the faults.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from credits_service.domain.commands import (
    CommitCommand,
    CommitResult,
    GrantCommand,
    GrantResult,
    ReleaseCommand,
    ReleaseResult,
    ReserveCommand,
    ReserveResult,
)
from credits_service.domain.model import GrantType
from credits_service.domain.plans import BUILT_IN, PlanBook
from credits_service.service.ledger import Ledger
from credits_service.service.reporting import NoMetrics
from credits_service.settings import Settings
from tests.support.fake_storage import FakeClock, FakeStorage

PAGE_TOKEN_KEY = b"unit-tests-page-token-key-32-byt"
ACTOR = "tester"


class RecordedMetrics(NoMetrics):
    """What the ledger reported: the sizes of its groups by kind, and its retries."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {}
        self.retries = 0

    def grouped(self, kind: str, size: int) -> None:
        self.groups.setdefault(kind, []).append(size)

    def transaction_retried(self) -> None:
        self.retries += 1


class Calls:
    """The ledger's calls in shorthand: a fresh idempotency key unless one is given, one
    actor, expiry in seconds from the fake clock."""

    def __init__(self, ledger: Ledger, clock: FakeClock, actor: str = ACTOR) -> None:
        self.ledger = ledger
        self._clock = clock
        self._actor = actor
        self._keys = (f"key-{n}" for n in itertools.count(1))

    def as_actor(self, actor: str) -> Calls:
        """The same ledger's calls made by another caller."""
        return Calls(self.ledger, self._clock, actor)

    def key(self) -> str:
        return next(self._keys)

    def grant_command(self, account_id: str, amount: int, *, priority: int | None = None,
                      expire_in_s: float | None = None, key: str | None = None,
                      grant_type: GrantType = GrantType.PURCHASE) -> GrantCommand:
        expire_time = (None if expire_in_s is None
                       else self._clock.now() + timedelta(seconds=expire_in_s))
        return GrantCommand(account_id, amount, grant_type, key or self.key(),
                            expire_time=expire_time, priority=priority)

    async def grant(self, account_id: str, amount: int, **options: Any) -> GrantResult:
        return await self.ledger.grant(self.grant_command(account_id, amount, **options),
                                       self._actor)

    def reserve_command(self, account_id: str, amount: int, *, ttl_ms: int | None = None,
                        key: str | None = None) -> ReserveCommand:
        return ReserveCommand(account_id, amount, key or self.key(), ttl_ms=ttl_ms)

    async def reserve(self, account_id: str, amount: int, **options: Any) -> ReserveResult:
        return await self.ledger.check_and_reserve(
            self.reserve_command(account_id, amount, **options), self._actor)

    async def commit(self, reservation_id: str, amount: int | None = None) -> CommitResult:
        return await self.ledger.commit(CommitCommand(reservation_id, amount), self._actor)

    async def release(self, reservation_id: str, reason: str = "") -> ReleaseResult:
        return await self.ledger.release(ReleaseCommand(reservation_id, reason))


def ledger_over(storage: FakeStorage, metrics: RecordedMetrics | None = None,
                plans: PlanBook = BUILT_IN, **settings: Any) -> Ledger:
    """A Ledger on the fake storage, with settings by their flat names; accounts are not
    created on first use unless auto_create_accounts=True."""
    built = Settings.build(**{"auto_create_accounts": False, **settings})
    return Ledger(storage.unit_of_work, built.ledger, PAGE_TOKEN_KEY, metrics, plans=plans,
                  auto_create_accounts=built.accounts.auto_create_accounts)


# Each test takes milliseconds: one that waits is stuck (say, on the fake's one transaction
# at a time), and fails fast instead of at the suite's timeout.
TIMEOUT_S = 10
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.timeout(TIMEOUT_S))


@pytest.fixture
def storage() -> FakeStorage:
    return FakeStorage()


@pytest.fixture
def clock(storage: FakeStorage) -> FakeClock:
    return storage.clock


@pytest.fixture
def metrics() -> RecordedMetrics:
    return RecordedMetrics()


@pytest.fixture
def ledger(storage: FakeStorage, metrics: RecordedMetrics) -> Ledger:
    return ledger_over(storage, metrics)


@pytest.fixture
def calls(ledger: Ledger, clock: FakeClock) -> Calls:
    return Calls(ledger, clock)


@pytest.fixture
def new_calls() -> Callable[..., Calls]:
    """Calls on a storage of their own, for tests that compare runs or build one per
    Hypothesis example (function-scoped fixtures are not reset between examples)."""

    def build(storage: FakeStorage, metrics: RecordedMetrics | None = None,
              **settings: Any) -> Calls:
        return Calls(ledger_over(storage, metrics, **settings), storage.clock)

    return build


@pytest.fixture(autouse=True)
def invariants_hold(storage: FakeStorage) -> Iterator[None]:
    """Every test ends with the ledger's invariants holding in the committed state."""
    yield
    storage.assert_invariants()
