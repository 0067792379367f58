"""BatchCheckAndReserve and BatchCommit: each item gets what it alone would have got."""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.errors import DatabaseUnavailable
from credits_service.service.reservations.batch import shard_of
from tests.grpc_errors import expect_error
from tests.metrics import scrape, value
from tests.support.calls import balance_of, commit, commit_request, grant, reserve_request

CODE = {code.value[0]: code for code in grpc.StatusCode}


async def _retries(app) -> float:
    samples = await scrape(app)
    return value(samples, "credits_transaction_retries_total")


def _summary(result) -> tuple:
    if result.HasField("error"):
        return ("error", CODE[result.error.code].name, result.error.reason)
    reservation = result.response.reservation
    return ("ok", reservation.amount, result.response.balance.available,
            [(d.held, d.consumed) for d in reservation.draws])


async def test_each_item_gets_its_own_result_as_if_sent_alone(stub, db):
    await grant(stub, "batch-a", 10)
    await grant(stub, "batch-b", 5)
    items = [
        reserve_request("batch-a", 4, key="k1"),
        reserve_request("batch-a", 0, key="k2"),  # invalid amount
        reserve_request("batch-a", 7, key="k3"),  # 6 left: declined
        reserve_request("nobody", 1, key="k4"),
        reserve_request("batch-b", 5, key="k5"),
        reserve_request("batch-a", 4, key="k1"),  # the same key and request: the same answer
        reserve_request("batch-a", 5, key="k1"),  # the same key, another request
        reserve_request("batch-a", 6, key="k6"),
    ]
    response = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=items))
    got = [_summary(result) for result in response.results]
    assert got == [
        ("ok", 4, 6, [(4, 0)]),
        ("error", "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("error", "FAILED_PRECONDITION", "INSUFFICIENT_CREDITS"),
        ("error", "NOT_FOUND", "ACCOUNT_NOT_FOUND"),
        ("ok", 5, 0, [(5, 0)]),
        ("ok", 4, 6, [(4, 0)]),
        ("error", "ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED"),
        ("ok", 6, 0, [(6, 0)]),
    ]
    assert response.results[0].response == response.results[5].response
    assert [v.field for v in response.results[1].error.field_violations] == ["amount"]
    assert response.results[2].error.metadata == {
        "accountId": "batch-a", "available": "6", "requested": "7"}

    # The same batch again replays every answer; nothing new is written.
    reservation_count = await db.fetchval("SELECT count(*) FROM reservations")
    again = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=items))
    assert [_summary(r) for r in again.results] == got
    assert again.results[0].response == response.results[0].response
    assert await db.fetchval("SELECT count(*) FROM reservations") == reservation_count
    # ... and a single call with one of the keys answers the same as its item did.
    single = await stub.CheckAndReserve(items[7])
    assert single == response.results[7].response


async def test_item_errors_name_their_status_code(stub):
    """An item error carries its code as a number and by name, as a status would."""
    await grant(stub, "batch-names", 1)
    response = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=[
        reserve_request("batch-names", 5), reserve_request("batch-names", 0),
        reserve_request("nobody-here", 1)]))
    errors = [(r.error.code, r.error.code_name, r.error.reason) for r in response.results]
    assert errors == [
        (grpc.StatusCode.FAILED_PRECONDITION.value[0], "FAILED_PRECONDITION",
         "INSUFFICIENT_CREDITS"),
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (grpc.StatusCode.NOT_FOUND.value[0], "NOT_FOUND", "ACCOUNT_NOT_FOUND"),
    ]
    commits = await stub.BatchCommit(pb.BatchCommitRequest(items=[
        commit_request(str(uuid.uuid4()))]))
    assert commits.results[0].error.code_name == "NOT_FOUND"


def _shard_of(app, account_id: str) -> int:
    """The batch shard the ledger sends `account_id`'s items to."""
    return shard_of(account_id, app.settings.ledger.batch_reserve_shards)


async def test_a_key_repeated_on_another_account_answers_as_one_by_one(app, stub,
                                                                       monkeypatch):
    """The first use of a key decides it, even when a later item repeats the key on an
    account whose shard decides first (batches are split over shards by account)."""
    ledger = app.ledger
    shards = app.settings.ledger.batch_reserve_shards
    names = [f"batch-key-{i}" for i in range(40)]
    first = next(name for name in names if _shard_of(app, name) == shards - 1)
    later = next(name for name in names if _shard_of(app, name) == 0)
    for account in (first, later):
        await grant(stub, account, 10)
    real = ledger.reserving.check_and_reserve_many

    async def first_decides_last(calls):
        if any(command.account_id == first for command, _ in calls):
            await asyncio.sleep(0.2)
        return await real(calls)

    monkeypatch.setattr(ledger.reserving, "check_and_reserve_many", first_decides_last)
    items = [reserve_request(first, 3, key="shared-key"),
             reserve_request(later, 3, key="shared-key"), reserve_request(later, 4)]
    response = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=items))
    assert [_summary(r) for r in response.results] == [
        ("ok", 3, 7, [(3, 0)]),
        ("error", "ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED"),
        ("ok", 4, 6, [(4, 0)]),
    ]


async def test_a_batch_must_hold_between_one_item_and_the_maximum(stub, test_settings):
    for count in (0, test_settings.ledger.batch_size_max + 1):
        request = pb.BatchCheckAndReserveRequest(
            items=[reserve_request("x", 1) for _ in range(count)])
        error = await expect_error(stub.BatchCheckAndReserve(request))
        assert (error.code, error.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                         "items")
        commit = pb.BatchCommitRequest(items=[commit_request(str(uuid.uuid4()))
                                              for _ in range(count)])
        error = await expect_error(stub.BatchCommit(commit))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_batch_commit_items_succeed_or_fail_on_their_own(stub, db):
    await grant(stub, "batch-c", 20)
    placed = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("batch-c", 3) for _ in range(4)]))
    ids = [result.response.reservation.reservation_id for result in placed.results]
    await commit(stub, ids[1], 2)
    items = [
        commit_request(ids[0]),
        commit_request(ids[1], 3),  # committed for 2 already
        commit_request("not-a-uuid"),
        commit_request(str(uuid.uuid4())),
        commit_request(ids[2], 30),  # more than available
        commit_request(ids[3], 5),
    ]
    response = await stub.BatchCommit(pb.BatchCommitRequest(items=items))
    summary = [
        ("error", r.error.reason) if r.HasField("error")
        else ("ok", r.response.reservation.committed_amount, r.response.entry.amount)
        for r in response.results
    ]
    assert summary == [
        ("ok", 3, -3),
        ("error", "RESERVATION_ALREADY_COMMITTED"),
        ("error", "INVALID_ARGUMENT"),
        ("error", "RESERVATION_NOT_FOUND"),
        ("error", "INSUFFICIENT_CREDITS"),
        ("ok", 5, -5),
    ]
    balance = await balance_of(stub, "batch-c")
    assert (balance.balance, balance.reserved) == (20 - 3 - 2 - 5, 3)


async def test_concurrent_batches_over_shared_accounts_and_keys_never_overdraw(stubs, db):
    """Batches racing over 5 accounts, with keys shared between batches (so two transactions
    claim the same keys): no overdraw, every key answered once and alike."""
    accounts = [f"batch-race-{i}" for i in range(5)]
    for account in accounts:
        await grant(stubs[0], account, 300)
    rng = random.Random(11)
    keys = [(f"shared-{n}", rng.choice(accounts), rng.randint(1, 9)) for n in range(120)]

    async def batch(n: int) -> list:
        chosen = rng.sample(keys, 40)
        request = pb.BatchCheckAndReserveRequest(
            items=[reserve_request(account, amount, key=key) for key, account, amount in chosen])
        response = await stubs[n % len(stubs)].BatchCheckAndReserve(request, timeout=30)
        return list(zip((key for key, _, _ in chosen), response.results, strict=True))

    answers: dict[str, set] = {}
    for results in await asyncio.gather(*(batch(n) for n in range(24))):
        for key, result in results:
            answers.setdefault(key, set()).add(result.SerializeToString(deterministic=True))
    assert all(len(seen) == 1 for seen in answers.values())
    held = await db.fetch("SELECT account_id, balance, reserved FROM accounts")
    assert all(row["reserved"] <= row["balance"] for row in held)
    placed = await db.fetchval("SELECT count(*) FROM reservations")
    ok = sum(1 for seen in answers.values()
             if pb.CheckAndReserveResult.FromString(next(iter(seen))).HasField("response"))
    assert placed == ok


async def test_a_key_sent_at_once_alone_and_in_a_batch_places_one_reservation(app, stubs, db):
    """A CheckAndReserve and a batch item with the same key run in two transactions at once
    (the unary group's and a batch shard's); the key is stored last, so the second finds it
    only when storing it: that one rolls back and replays. One reservation per key, both answers
    alike, and some rounds did race (the retry counter moved)."""
    await grant(stubs[0], "batch-dup", 1000)
    retried_before = await _retries(app)
    for round_ in range(20):
        keys = [f"dup-{round_}-{n}" for n in range(5)]
        alone = [stubs[n % len(stubs)].CheckAndReserve(reserve_request("batch-dup", 1, key=key),
                                                       timeout=30)
                 for n, key in enumerate(keys)]
        batch = stubs[-1].BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
            items=[reserve_request("batch-dup", 1, key=key) for key in keys]), timeout=30)
        *singles, batched = await asyncio.gather(*alone, batch)
        for single, result in zip(singles, batched.results, strict=True):
            assert result.response.SerializeToString(deterministic=True) == (
                single.SerializeToString(deterministic=True))
    assert await db.fetchval("SELECT count(*) FROM reservations") == 100
    assert await db.fetchval(
        "SELECT reserved FROM accounts WHERE account_id = 'batch-dup'") == 100
    assert await _retries(app) > retried_before
    # Declines too: a transaction that places no reservation stores its keys alone.
    await grant(stubs[0], "batch-dup-poor", 1)
    retried_before = await _retries(app)
    for round_ in range(20):
        key = f"dup-poor-{round_}"
        single, batched = await asyncio.gather(
            stubs[0].CheckAndReserve(reserve_request("batch-dup-poor", 5, key=key), timeout=30),
            stubs[-1].BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
                items=[reserve_request("batch-dup-poor", 5, key=key)]), timeout=30),
            return_exceptions=True)
        assert isinstance(single, grpc.aio.AioRpcError)
        assert single.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert batched.results[0].error.reason == "INSUFFICIENT_CREDITS"
    assert await _retries(app) > retried_before


class _Transactions:
    """Watches the ledger's batch transactions: for each, its calls, its accounts and the
    accounts of the transactions running when it started. Each is held 50 ms, long enough
    for the other batches to arrive."""

    def __init__(self, ledger, monkeypatch) -> None:
        self.started: list[tuple[list, set[str], list[set[str]]]] = []
        running: list[set[str]] = []
        real = ledger.reserving.check_and_reserve_many

        async def watched(calls):
            accounts = {command.account_id for command, _ in calls}
            self.started.append((calls, accounts, list(running)))
            running.append(accounts)
            try:
                await asyncio.sleep(0.05)
                return await real(calls)
            finally:
                running.remove(accounts)

        monkeypatch.setattr(ledger.reserving, "check_and_reserve_many", watched)


async def _batches_over_shared_accounts(stubs, accounts: list[str], batches: int = 24) -> None:
    """`batches` concurrent batches, each holding 1 credit three times on every account (each
    item tagged with its batch); every item is placed and every account holds them all."""
    for account in accounts:
        await grant(stubs[0], account, 1_000)

    async def batch(n: int):
        items = [reserve_request(account, 1) for account in accounts * 3]
        for item in items:
            item.metadata["batch"] = str(n)
        return await stubs[n % len(stubs)].BatchCheckAndReserve(
            pb.BatchCheckAndReserveRequest(items=items), timeout=30)

    responses = await asyncio.gather(*(batch(n) for n in range(batches)))
    assert all(r.HasField("response") for response in responses for r in response.results)
    for account in accounts:
        balance = await balance_of(stubs[0], account)
        assert balance.reserved == batches * 3


async def test_concurrent_batches_run_as_transactions_over_disjoint_accounts(app, stubs, db,
                                                                            monkeypatch):
    """Concurrent batches over shared accounts are split by account and merged: while groups
    are partial, transactions run side by side only over disjoint accounts (never waiting on
    each other's locks), one transaction decides items of several batches, and none decides
    more than its bound."""
    transactions = _Transactions(app.ledger, monkeypatch)
    await _batches_over_shared_accounts(stubs, [f"batch-shard-{i}" for i in range(12)])
    for _, accounts, beside in transactions.started:
        assert all(accounts.isdisjoint(other) for other in beside)
    assert any(beside for _, _, beside in transactions.started)
    assert any(len({command.metadata["batch"] for command, _ in calls}) > 1
               for calls, _, _ in transactions.started)
    limit = app.settings.ledger.batch_reserve_group_items_max
    assert max(len(calls) for calls, _, _ in transactions.started) <= limit


async def test_a_shard_runs_a_second_transaction_only_for_a_full_group(app, stubs, db,
                                                                      monkeypatch):
    """When a shard's queue fills whole groups, a second transaction over the same accounts
    starts beside the running one (its statements wait on the first's locks in the database,
    not in the queue), never a third, and only with a full group; no reservation is lost or
    doubled."""
    items_max = 30
    for shard in app.ledger.batches._shards:
        monkeypatch.setattr(shard, "_group_size_max", items_max)
    transactions = _Transactions(app.ledger, monkeypatch)
    accounts = [f"batch-full-{i}" for i in range(12)]
    await _batches_over_shared_accounts(stubs, accounts)
    shards = app.settings.ledger.batch_reserve_shards
    per_shard = [sum(_shard_of(app, a) == s for a in accounts) for s in range(shards)]
    part_max = 3 * max(per_shard)  # the most items one batch sends one shard
    seconds = 0
    for calls, mine, beside in transactions.started:
        sharing = [other for other in beside if not mine.isdisjoint(other)]
        assert len(sharing) <= 1
        if sharing:
            seconds += 1
            assert len(calls) > items_max - part_max  # the next part would not have fitted
        assert len(calls) <= items_max
    assert seconds


async def test_a_batch_that_fails_on_one_shard_is_retried_safely(app, stub, db, monkeypatch):
    """A database failure on the shard of some of a batch's accounts fails the call, while
    the items of other shards may be decided: the retry with the same keys replays those and
    decides the rest, each once."""
    ledger = app.ledger
    accounts = [f"batch-part-{i}" for i in range(8)]
    for account in accounts:
        await grant(stub, account, 10)
    items = [reserve_request(account, 2) for account in accounts]
    real = ledger.reserving.check_and_reserve_many

    async def failing(calls):
        if any(command.account_id == accounts[0] for command, _ in calls):
            raise DatabaseUnavailable("the database went away")
        return await real(calls)

    monkeypatch.setattr(ledger.reserving, "check_and_reserve_many", failing)
    error = await expect_error(
        stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=items)))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    decided = await db.fetch("SELECT account_id, reservation_id FROM reservations")
    assert 0 < len(decided) < len(accounts)  # the other shards' parts were decided

    monkeypatch.setattr(ledger.reserving, "check_and_reserve_many", real)
    retried = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=items))
    placed = {r.response.reservation.account_id: r.response.reservation.reservation_id
              for r in retried.results}
    assert set(placed) == set(accounts)
    assert all(placed[row["account_id"]] == str(row["reservation_id"]) for row in decided)
    assert await db.fetchval("SELECT count(*) FROM reservations") == len(accounts)
    for account in accounts:
        balance = await balance_of(stub, account)
        assert balance.reserved == 2


async def test_held_times_read_back_as_answered_for_every_ttl(stub):
    """A group writes its reservations' expire_time as create_time plus each TTL in the database:
    what a list reads back is what the batch answered, to the microsecond."""
    await grant(stub, "ttl-a", 100)
    ttls_ms = [None, 1_000, 1_234, 59_999, 86_399_999, 86_400_000]
    items = []
    for ttl_ms in ttls_ms:
        item = reserve_request("ttl-a", 1)
        if ttl_ms is not None:
            item.ttl.FromMilliseconds(ttl_ms)
        items.append(item)
    response = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=items))
    answered = {r.response.reservation.reservation_id: r.response.reservation
                for r in response.results}
    assert len(answered) == len(ttls_ms)
    for result, ttl_ms in zip(response.results, ttls_ms, strict=True):
        held = result.response.reservation
        lived = held.expire_time.ToNanoseconds() - held.create_time.ToNanoseconds()
        assert lived == (ttl_ms or 300_000) * 1_000_000
    listed = await stub.ListReservations(pb.ListReservationsRequest(account_id="ttl-a"))
    assert {r.reservation_id: (r.create_time, r.expire_time) for r in listed.reservations} == {
        i: (r.create_time, r.expire_time) for i, r in answered.items()}
