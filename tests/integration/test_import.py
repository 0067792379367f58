"""`credits-service import` and `seed` against the real database: good rows credit once
however often the file is imported, bad ones are reported by line and write nothing, a dry
run writes nothing at all; seeding twice is seeding once; the ledger stays whole."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from credits.v1 import credits_pb2 as pb
from tests.ledger_checks import row_counts
from tests.serve_launcher import REPO_ROOT, clean_env
from tests.support.calls import adjust, grant
from tests.support.serving import EXAMPLE_PLANS

FILE = """account_id,amount,plan,expire_time,external_id
new-1,500,,,legacy-1
known,25,,2031-06-30T00:00:00Z,
known,25,,2031-06-30T00:00:00Z,
bad id,5,,,
new-2,7,gold,,
closed-one,3,,,
"""


def run_import(database_url: str, path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credits_service", "import", str(path), "--database-url",
         database_url, *flags], cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True,
        timeout=120)


async def test_import_credits_each_row_once_and_refuses_bad_rows(
        stub, db, database_url, tmp_path):
    path = tmp_path / "balances.csv"
    path.write_text(FILE)
    await grant(stub, "known", 10)
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="closed-one"))
    await stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="closed-one", status=pb.ACCOUNT_STATUS_CLOSED, reason="gone"))
    before = await row_counts(db)

    dry = await asyncio.to_thread(run_import, database_url, path, "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert "would import 3 (528 credits, 1 new accounts)" in dry.stdout
    assert await row_counts(db) == before

    first = await asyncio.to_thread(run_import, database_url, path)
    assert first.returncode == 1, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split(":")[1] for line in lines if line.startswith(str(path))] == [
        "5", "6", "7"]
    assert "account 'closed-one' is closed" in first.stdout
    assert "imported 2 (525 credits, 1 new accounts); 1 imported before or repeated" in (
        first.stdout)
    balance = await stub.GetBalance(pb.GetBalanceRequest(account_id="known"))
    assert balance.balance.balance == 35
    lots = {lot.amount: lot for lot in balance.lots}
    assert lots[25].expire_time.seconds > 0
    new = await stub.GetBalance(pb.GetBalanceRequest(account_id="new-1"))
    assert new.balance.balance == 500 and new.account.plan == "default"
    history = await stub.History(pb.HistoryRequest(account_id="new-1"))
    assert dict(history.entries[0].metadata) == {"import_line": "2", "external_id": "legacy-1"}
    assert history.entries[0].actor == "import"

    again = await asyncio.to_thread(run_import, database_url, path)
    assert "imported 0 (0 credits, 0 new accounts); 3 imported before" in again.stdout
    assert (await stub.GetBalance(pb.GetBalanceRequest(account_id="known"))).balance.balance == 35


def run_seed(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credits_service", "seed", "docs/seed.example.toml",
         "--plans-file", "docs/plans.example.toml", "--database-url", database_url],
        cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)


async def test_seed_creates_the_demo_accounts_once(stub, db, database_url):
    first = await asyncio.to_thread(run_seed, database_url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 accounts (3 created now), 3 grants" in first.stdout
    counts = await row_counts(db)
    again = await asyncio.to_thread(run_seed, database_url)
    assert "3 accounts (0 created now)" in again.stdout
    assert await row_counts(db) == counts
    pro = await stub.GetBalance(pb.GetBalanceRequest(account_id="demo-pro"))
    assert pro.account.plan == "pro" and pro.balance.balance == 100 + 1000 + 50
    assert pro.totals.purchased == 1000


async def test_import_pays_what_an_account_owes_first_and_gives_new_ones_their_plan_s_limit(
        stub, db, database_url, tmp_path):
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="owes"))
    await adjust(stub, "owes", pb.ADJUST_MODE_DEDUCT, 30, allow_negative=True)
    path = tmp_path / "balances.csv"
    path.write_text("account_id,amount,plan\nowes,20,\nowes,25,\nfresh,1,postpaid\n")
    done = await asyncio.to_thread(run_import, database_url, path, "--plans-file",
                                   str(EXAMPLE_PLANS))
    assert done.returncode == 0, done.stdout + done.stderr
    owes = await stub.GetBalance(pb.GetBalanceRequest(account_id="owes"))
    assert (owes.balance.balance, owes.balance.debt) == (15, 0)
    rows = await db.fetch("SELECT amount, remaining, repaid FROM credit_lots "
                          "WHERE account_id = 'owes' ORDER BY lot_id")
    assert [tuple(row.values()) for row in rows] == [(20, 0, 20), (25, 15, 10)]
    fresh = await db.fetchrow("SELECT plan, credit_limit FROM accounts "
                              "WHERE account_id = 'fresh'")
    assert tuple(fresh.values()) == ("postpaid", 100)
