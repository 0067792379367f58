"""`credits-service export` against the real database: the entries of a time window as CSV,
one snapshot, all of them or the usage, of every account or one; bad arguments refused."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys

from credits.v1 import credits_pb2 as pb
from tests.integration.test_rates import app_with_card
from tests.serve_launcher import REPO_ROOT, clean_env
from tests.support.calls import grant, reserve

WINDOW = ("--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")


def run_export(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credits_service", "export", *args, "--database-url",
         database_url], cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True,
        timeout=120)


async def test_export_writes_the_window_s_entries_as_csv(stub, db, database_url, tmp_path):
    await grant(stub, "a", 100, reason='gift, "quoted"\nsecond line')
    await grant(stub, "b", 10)
    held = await reserve(stub, "a", 30, metadata={"job": "render, 4k"})
    await stub.Commit(pb.CommitRequest(reservation_id=held.reservation.reservation_id,
                                       metadata={"job": "render, 4k"}))
    out = tmp_path / "history.csv"

    done = await asyncio.to_thread(run_export, database_url, "history", *WINDOW,
                                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "export: 3 history rows" in done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["account_id"], r["entry_type"], r["amount"], r["balance_after"]) for r in rows] == [
        ("a", "GRANT", "100", "100"), ("b", "GRANT", "10", "10"), ("a", "USAGE", "-30", "70")]
    assert rows[0]["reason"] == 'gift, "quoted"\nsecond line'
    assert rows[0]["grant_type"] == "PURCHASE" and rows[0]["create_time"].endswith("Z")
    assert json.loads(rows[2]["metadata"]) == {"job": "render, 4k"}
    assert rows[2]["reservation_id"] == held.reservation.reservation_id

    usage = await asyncio.to_thread(run_export, database_url, "usage", *WINDOW,
                                    "--account", "a")
    assert usage.returncode == 0, usage.stderr
    lines = list(csv.reader(io.StringIO(usage.stdout)))
    assert lines[0][:3] == ["entry_id", "create_time", "account_id"] and len(lines) == 2
    empty = await asyncio.to_thread(run_export, database_url, "history", "--from",
                                    "2000-01-01T00:00:00Z", "--to", "2000-01-02T00:00:00Z")
    assert empty.returncode == 0 and len(empty.stdout.splitlines()) == 1


async def test_export_refuses_bad_arguments(database_url):
    for args, message in (
            (("history", "--from", "yesterday", "--to", "2100-01-01T00:00:00Z"),
             "--from 'yesterday': an ISO 8601 time"),
            (("history", "--from", "2026-01-01T00:00:00", "--to", "2100-01-01T00:00:00Z"),
             "give its offset"),
            (("history", "--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"),
             "--to must be after --from"),
            (("usage", *WINDOW, "--account", "no spaces"), "--account 'no spaces'")):
        done = await asyncio.to_thread(run_export, database_url, *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr


async def test_exported_usage_says_its_feature_units_and_card(
        test_settings, db, database_url, tmp_path):
    card = tmp_path / "rates.toml"
    card.write_text('version = "e1"\n[features.llm]\nunits_per_credit = 100\n'
                    'minimum_charge = 1\n')
    async with app_with_card(test_settings, card) as (_, stub):
        await grant(stub, "a", 100)
        held = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
            account_id="a", feature="llm", units=250, idempotency_key="k1"))
        await stub.Commit(pb.CommitRequest(reservation_id=held.reservation.reservation_id,
                                           units=420))
    usage = await asyncio.to_thread(run_export, database_url, "usage", *WINDOW)
    assert usage.returncode == 0, usage.stderr
    rows = list(csv.DictReader(io.StringIO(usage.stdout)))
    assert [(r["amount"], r["feature"], r["units"], r["rate_card_version"]) for r in rows] == [
        ("-5", "llm", "420", "e1")]
