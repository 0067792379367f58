"""The fake storage is faithful where the rules depend on it: transactions, conditional
writes, compare-and-set, constraints (tests/support/fake_storage.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from credits_service.domain.lots import LotChange
from credits_service.domain.model import LotDraw, Reservation, ReservationStatus
from credits_service.domain.rows import HeldTotals, KeyRecord
from credits_service.persistence.errors import StorageTimeout, TransientConflict
from tests.support.fake_storage import AbortedTransaction, ConstraintViolation

RESERVATION_ID = "0190f0f0-0000-7000-8000-000000000001"


async def test_leaving_without_commit_changes_nothing_but_the_id_sequences(calls, storage):
    lot = (await calls.grant("acct", 10)).lot
    before = storage.snapshot()

    async with storage.unit_of_work() as uow:
        await uow.accounts.credit("acct", 5, 100)
        created = await uow.lots.create(account_id="acct", grant_type=lot.grant_type,
                                        priority=1, expire_time=None, amount=5)

    assert storage.snapshot() == before
    assert (await calls.grant("acct", 1)).lot.lot_id == created.lot_id + 1  # as sequences do


async def test_after_commit_callbacks_run_in_order_only_once_committed(storage):
    ran = []
    async with storage.unit_of_work() as uow:
        uow.on_commit(lambda: ran.append("rolled back"))
    async with storage.unit_of_work() as uow:
        uow.on_commit(lambda: ran.append(1))
        uow.on_commit(lambda: ran.append(2))
        assert ran == []
        await uow.commit()

    assert ran == [1, 2]


async def test_a_conditional_write_leaves_out_the_rows_it_does_not_change(calls, storage):
    lot = (await calls.grant("acct", 10)).lot
    async with storage.unit_of_work() as uow:
        now = await uow.now()
        too_much = Reservation(RESERVATION_ID, "acct", 20, ReservationStatus.ACTIVE, None, now,
                               now + timedelta(seconds=60), None, {}, (LotDraw(lot.lot_id, 5),))

        placed = await uow.groups.place({lot.lot_id: 5}, {"acct": HeldTotals(20, 1)},
                                        [too_much], ["tester"], "CheckAndReserve", [])

        # PLACE writes the lots, reservations and draws whatever the account update did
        assert (placed.balances, placed.lots, placed.reservations, placed.draws) == ({}, 1, 1, 1)
        assert await uow.accounts.capture("acct", held=0, amount=11) is None
    assert RESERVATION_ID not in storage.reservations


async def test_a_compare_and_set_leaves_out_reservations_no_longer_active(calls, storage):
    await calls.grant("acct", 10)
    active = (await calls.reserve("acct", 2)).reservation.reservation_id
    released = (await calls.reserve("acct", 2)).reservation.reservation_id
    await calls.release(released)

    async with storage.unit_of_work() as uow:
        finished = await uow.reservations.finish([active, released], ReservationStatus.EXPIRED)

    assert list(finished) == [active]


async def test_a_failed_statement_aborts_the_transaction(calls, storage):
    await calls.grant("acct", 10, key="taken")
    key = KeyRecord("tester", "taken", b"hash", "{}")

    async with storage.unit_of_work() as uow:
        with pytest.raises(TransientConflict):
            await uow.groups.complete("Grant", [key])
        with pytest.raises(AbortedTransaction):
            await uow.accounts.get("acct")
        with pytest.raises(RuntimeError):
            await uow.commit()


async def test_a_write_breaking_a_schema_constraint_fails_its_statement(calls, storage):
    lot = (await calls.grant("acct", 10)).lot.lot_id

    async with storage.unit_of_work() as uow:
        with pytest.raises(ConstraintViolation, match="ck_credit_lots_amounts"):
            await uow.lots.apply([LotChange(lot, held_delta=11, remaining_delta=0)])


async def test_a_call_deadline_already_passed_times_out_before_the_transaction(storage):
    with pytest.raises(StorageTimeout):
        async with storage.unit_of_work(time_remaining_s=0):
            pass
    async with storage.unit_of_work(time_remaining_s=0.5):
        pass
