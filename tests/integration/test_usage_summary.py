"""UsageSummary against the real server and database: usage by feature and bucket for an
account, a plan and everyone, the top spenders, the current period by default, and every bad
request refused. The rollups it reads are kept with the entries and checked against them (the
ledger invariants every test here ends with)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from credits_service.persistence.invariants import INVARIANTS
from credits_service.service import usage as usage_service
from tests.grpc_errors import assert_error, expect_error
from tests.integration.test_rates import app_with_card
from tests.support.calls import commit, grant, reserve, reserve_request

CARD = ('version = "u1"\n[features.llm]\nunits_per_credit = 1000\nminimum_charge = 1\n'
        '[features.image]\ncost_per_call = 5\n[plans.pro.features.image]\ncost_per_call = 3\n'
        '[features.video]\nunits_per_credit = 1\nminimum_charge = 1\n')


def _at(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def _use(stub, account: str, feature: str = "", units: int = 0, amount: int = 0,
               commit_units: int | None = None) -> None:
    if feature:
        held = await stub.CheckAndReserve(reserve_request(account, 0, feature=feature,
                                                          units=units))
    else:
        held = await reserve(stub, account, amount)
    await commit(stub, held.reservation.reservation_id, units=commit_units) if (
        commit_units is not None) else await commit(stub, held.reservation.reservation_id)


def _rows(response) -> list[tuple]:
    return [(b.start_time.ToDatetime(tzinfo=UTC), b.usage.feature, b.usage.credits,
             b.usage.units, b.usage.calls) for b in response.buckets]


@pytest.fixture
async def usage_app(test_settings, tmp_path):
    from tests.support.serving import EXAMPLE_PLANS
    card = tmp_path / "rates.toml"
    card.write_text(CARD)
    async with app_with_card(test_settings.replace(plans_file=str(EXAMPLE_PLANS)), card) as (
            app, stub):
        yield app, stub
    app.clock.offset_ms = 0


async def test_usage_by_feature_and_bucket_for_an_account_a_plan_and_everyone(usage_app, db):
    app, stub = usage_app
    # Start on a whole hour a little ahead, so the hours used are known
    now = await db.fetchval("SELECT now()")
    hour0 = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    app.clock.advance((hour0 - now).total_seconds() + 60)
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="a", plan="free"))
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="b", plan="pro"))
    await grant(stub, "a", 1000)
    await grant(stub, "b", 1000)
    await _use(stub, "a", "llm", 1500, commit_units=2500)  # 3 credits, 2,500 tokens
    await _use(stub, "a", amount=4)  # by amount: feature ""
    await _use(stub, "b", "image")  # pro: 3
    app.clock.advance(3600)
    await _use(stub, "a", "image")  # 5
    await _use(stub, "b", "llm", 4000)  # 4 credits, its estimate as its units
    app.clock.advance(25 * 3600)
    await _use(stub, "b", "image")  # 3, a day later
    hour1, hour26 = hour0 + timedelta(hours=1), hour0 + timedelta(hours=26)
    start, end = _at(hour0 - timedelta(hours=1)), _at(hour0 + timedelta(hours=30))

    mine = await stub.UsageSummary(pb.UsageSummaryRequest(
        account_ids=["a"], start_time=start, end_time=end,
        bucket_size=pb.USAGE_BUCKET_SIZE_HOUR))
    assert _rows(mine) == [(hour0, "", 4, 0, 1), (hour0, "llm", 3, 2500, 1),
                           (hour1, "image", 5, 0, 1)]
    assert [(f.feature, f.credits, f.units, f.calls) for f in mine.features] == [
        ("", 4, 0, 1), ("image", 5, 0, 1), ("llm", 3, 2500, 1)]
    assert [(t.account_id, t.credits, t.calls) for t in mine.top_accounts] == [("a", 12, 3)]

    everyone = await stub.UsageSummary(pb.UsageSummaryRequest(
        start_time=start, end_time=end, bucket_size=pb.USAGE_BUCKET_SIZE_HOUR))
    assert _rows(everyone) == [
        (hour0, "", 4, 0, 1), (hour0, "image", 3, 0, 1), (hour0, "llm", 3, 2500, 1),
        (hour1, "image", 5, 0, 1), (hour1, "llm", 4, 4000, 1), (hour26, "image", 3, 0, 1)]
    assert [(t.account_id, t.credits) for t in everyone.top_accounts] == [("a", 12), ("b", 10)]
    monthly = await stub.UsageSummary(pb.UsageSummaryRequest(
        start_time=start, end_time=end, bucket_size=pb.USAGE_BUCKET_SIZE_MONTH))
    assert sum(b.usage.credits for b in monthly.buckets) == 22

    pro = await stub.UsageSummary(pb.UsageSummaryRequest(
        plan="pro", start_time=start, end_time=end, features=["image"], top_accounts=1))
    days = sorted({(b.start_time.ToDatetime(tzinfo=UTC), b.usage.credits)
                   for b in pro.buckets})
    assert sum(credits for _, credits in days) == 6 and all(
        day.hour == 0 for day, _ in days)
    assert [(t.account_id, t.credits) for t in pro.top_accounts] == [("b", 6)]
    # The top spenders of a range of whole days and ragged ends agree with its hours
    ragged = await stub.UsageSummary(pb.UsageSummaryRequest(
        start_time=_at(hour1), end_time=_at(hour26 + timedelta(hours=1)), top_accounts=5))
    assert [(t.account_id, t.credits) for t in ragged.top_accounts] == [("b", 7), ("a", 5)]
    # A whole month (usage_months) and two more days (usage_days)
    month0 = hour0.replace(day=1, hour=0)
    next_month = (month0 + timedelta(days=32)).replace(day=1)
    whole = await stub.UsageSummary(pb.UsageSummaryRequest(
        start_time=_at(month0), end_time=_at(next_month + timedelta(days=2)),
        bucket_size=pb.USAGE_BUCKET_SIZE_MONTH, features=["llm", ""]))
    assert [(t.account_id, t.credits) for t in whole.top_accounts] == [("a", 7), ("b", 4)]
    assert sum(f.credits for f in whole.features) == 11

    # The current period: this month so far, unless the clock says otherwise
    current = await stub.UsageSummary(pb.UsageSummaryRequest(account_ids=["b"]))
    clock_now = await db.fetchval("SELECT now() + $1 * interval '1 millisecond'",
                                  app.clock.offset_ms)
    assert current.start_time.ToDatetime(tzinfo=UTC) == clock_now.astimezone(UTC).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0)
    assert current.end_time.ToDatetime(tzinfo=UTC) == clock_now.astimezone(UTC).replace(
        minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert current.bucket_size == pb.USAGE_BUCKET_SIZE_DAY
    if hour0.month == (hour26 + timedelta(hours=1)).month:
        assert sum(f.credits for f in current.features) == 10
        assert [(t.account_id, t.credits) for t in current.top_accounts] == [("b", 10)]
    everyone_now = await stub.UsageSummary(pb.UsageSummaryRequest(
        start_time=_at(hour1), top_accounts=5))  # to the present: its day read whole
    assert [(t.account_id, t.credits) for t in everyone_now.top_accounts] == [
        ("b", 7), ("a", 5)]


async def test_bad_summaries_are_refused_naming_the_field(usage_app, monkeypatch):
    _, stub = usage_app
    hour = datetime(2026, 12, 1, tzinfo=UTC)
    for request, field in [
        (pb.UsageSummaryRequest(start_time=_at(hour), end_time=_at(hour)), "end_time"),
        (pb.UsageSummaryRequest(start_time=_at(hour + timedelta(minutes=5))), "start_time"),
        (pb.UsageSummaryRequest(start_time=_at(hour), end_time=_at(hour + timedelta(days=32)),
                                bucket_size=pb.USAGE_BUCKET_SIZE_HOUR), "end_time"),
        (pb.UsageSummaryRequest(account_ids=["a"], plan="pro"), "plan"),
        (pb.UsageSummaryRequest(account_ids=["no spaces"]), "account_ids[0]"),
        (pb.UsageSummaryRequest(account_ids=[f"a{i}" for i in range(101)]), "account_ids"),
        (pb.UsageSummaryRequest(features=["bad feature"]), "features[0]"),
        (pb.UsageSummaryRequest(top_accounts=101), "top_accounts"),
        (pb.UsageSummaryRequest(bucket_size=9), "bucket_size"),
    ]:
        error = await expect_error(stub.UsageSummary(request))
        assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert field in [name for name, _ in error.field_violations], (field, error)

    await grant(stub, "a", 100)
    for _ in range(3):
        await _use(stub, "a", amount=1)
    await _use(stub, "a", "image")
    monkeypatch.setattr(usage_service, "ROWS_MAX", 1)
    error = await expect_error(stub.UsageSummary(pb.UsageSummaryRequest()))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "SUMMARY_TOO_LARGE", rowsMax="1")


async def test_verify_finds_a_rollup_that_disagrees_with_the_entries(usage_app, db):
    _, stub = usage_app
    await grant(stub, "a", 100)
    await _use(stub, "a", "llm", 10)
    rollups = [name for name in INVARIANTS
               if name.startswith("usage_") and "USAGE entries" in name]
    assert len(rollups) == 4
    for table in ("usage_hours", "usage_days", "usage_months", "usage_shards"):
        await db.execute(f"UPDATE {table} SET credits = credits + 1")
        broken = [name for name in rollups if await db.fetch(INVARIANTS[name])]
        assert broken == [name for name in rollups if name.startswith(table)]
        await db.execute(f"UPDATE {table} SET credits = credits - 1")
    assert not [name for name in rollups if await db.fetch(INVARIANTS[name])]


async def test_the_sweeper_folds_the_shards_of_hours_past_and_summaries_stay_the_same(
        usage_app, db):
    app, stub = usage_app
    await grant(stub, "a", 100)
    await grant(stub, "b", 100)
    await _use(stub, "a", "llm", 10)
    await _use(stub, "b", "llm", 10)
    await _use(stub, "b", amount=3)
    await db.execute("UPDATE usage_shards SET shard = 7 WHERE feature = ''")  # another backend
    request = pb.UsageSummaryRequest(bucket_size=pb.USAGE_BUCKET_SIZE_HOUR)
    before = await stub.UsageSummary(request)
    assert await app.sweeper.compact_once() == 0  # the hour is not over yet
    app.clock.advance(2 * 3600 + 60)
    # Two commits on different pooled connections (backends) write two shard rows
    unfolded = await db.fetchval("SELECT count(*) FROM usage_shards WHERE shard >= 0")
    assert unfolded >= 2
    assert await app.sweeper.compact_once() == unfolded
    shards = await db.fetch("SELECT feature, shard, calls FROM usage_shards ORDER BY 1")
    assert [tuple(row) for row in shards] == [("", -1, 1), ("llm", -1, 2)]
    after = await stub.UsageSummary(pb.UsageSummaryRequest(
        bucket_size=pb.USAGE_BUCKET_SIZE_HOUR, start_time=before.start_time,
        end_time=before.end_time))
    assert _rows(after) == _rows(before) and len(_rows(before)) == 2
    await _use(stub, "a", "llm", 10)  # a new hour: a new shard row
    assert await db.fetchval("SELECT count(*) FROM usage_shards WHERE shard >= 0") == 1


async def test_rollups_key_utc_days_and_months_whatever_the_session_time_zone(db):
    """A session west of UTC writes 03:00 UTC on 1 December as 30 November local time: the
    rollups still key it to the UTC day and month."""
    async with db.transaction():
        await db.execute("SET LOCAL TimeZone = 'America/Los_Angeles'")
        await db.execute("INSERT INTO accounts (account_id) VALUES ('tz')")
        await db.execute(
            "INSERT INTO reservations (reservation_id, account_id, amount, status, expire_time,"
            " actor) VALUES ('00000000-0000-0000-0000-0000000000aa', 'tz', 1, 'ACTIVE',"
            " credits_now() + interval '1 hour', 'test')")
        await db.execute(
            "INSERT INTO ledger_entries (account_id, entry_type, amount, balance_after,"
            " reservation_id, actor, create_time) VALUES ('tz', 'USAGE', -1, -1,"
            " '00000000-0000-0000-0000-0000000000aa', 'test', '2026-12-01T03:00:00Z')")
        assert await db.fetchval("SELECT day FROM usage_days") == date(2026, 12, 1)
        assert await db.fetchval("SELECT month FROM usage_months") == date(2026, 12, 1)
        assert await db.fetchval("SELECT hour FROM usage_hours") == datetime(
            2026, 12, 1, 3, tzinfo=UTC)
        broken = [name for name in INVARIANTS if name.startswith("usage_")
                  and await db.fetch(INVARIANTS[name])]
        assert broken == []
        await db.execute("DELETE FROM usage_hours; DELETE FROM usage_days;"
                         " DELETE FROM usage_months; DELETE FROM usage_shards;"
                         " DELETE FROM ledger_entries; DELETE FROM reservations;"
                         " DELETE FROM accounts")


async def test_a_summary_up_to_the_last_hour_there_is_answers_and_commits_check_state_first(
        usage_app, db):
    _, stub = usage_app
    far = await stub.UsageSummary(pb.UsageSummaryRequest(
        start_time=_at(datetime(9999, 12, 31, tzinfo=UTC)),
        end_time=_at(datetime(9999, 12, 31, 23, tzinfo=UTC))))
    assert list(far.buckets) == [] and list(far.top_accounts) == []

    await grant(stub, "a", 100)
    held = await reserve(stub, "a", 5)
    await stub.Release(pb.ReleaseRequest(reservation_id=held.reservation.reservation_id))
    error = await expect_error(commit(stub, held.reservation.reservation_id, units=3))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED")
    done = await stub.CheckAndReserve(reserve_request("a", 0, feature="video", units=10))
    await commit(stub, done.reservation.reservation_id, units=10)
    error = await expect_error(commit(stub, done.reservation.reservation_id, units=10**15))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED")


async def test_replicas_folding_at_once_fold_each_shard_row_once(usage_app, db):
    app, stub = usage_app
    await grant(stub, "a", 1000)
    for _ in range(6):  # six hours, each of two features, in a shard per connection used
        await _use(stub, "a", "llm", 10)
        await _use(stub, "a", amount=2)
        app.clock.advance(3600)
    app.clock.advance(2 * 3600)
    before = await db.fetchval("SELECT count(*) FROM usage_shards")
    folded = await asyncio.gather(*(app.ledger.maintenance.compact_usage_shards(3600, 3)
                                    for _ in range(4)))
    folded_more = await app.sweeper.compact_once()
    assert sum(folded) + folded_more == before
    assert await db.fetchval("SELECT count(*) FROM usage_shards WHERE shard >= 0") == 0
    assert await db.fetchval("SELECT count(*) FROM usage_shards") == 12  # 6 hours x 2
    assert not [name for name in INVARIANTS if name.startswith("usage_")
                and await db.fetch(INVARIANTS[name])]
