"""`credits-service verify` over the real database: every invariant holds after a mix of every
kind of change, and a broken one is named, with exit code 1."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from credits.v1 import credits_pb2 as pb
from tests.serve_launcher import REPO_ROOT, clean_env
from tests.support.calls import grant, reserve


def verify(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credits_service", "verify", "--database-url", database_url],
        cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)


async def test_verify_passes_a_busy_ledger_and_names_what_breaks(stub, db, database_url):
    await grant(stub, "a", 100)
    await grant(stub, "b", 10)
    used = (await reserve(stub, "a", 30)).reservation.reservation_id
    await stub.Commit(pb.CommitRequest(reservation_id=used, amount=20))
    await reserve(stub, "a", 5)
    await stub.Refund(pb.RefundRequest(reservation_id=used, amount=5, idempotency_key="r"))
    await stub.Transfer(pb.TransferRequest(from_account_id="a", to_account_id="b", amount=7,
                                           idempotency_key="t"))
    await stub.Adjust(pb.AdjustRequest(account_id="b", mode=pb.ADJUST_MODE_DEDUCT, amount=2,
                                       idempotency_key="d", reason="fix"))

    result = await asyncio.to_thread(verify, database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every invariant holds" in result.stdout and "BROKEN" not in result.stdout

    await db.execute("UPDATE accounts SET balance = balance + 1 WHERE account_id = 'b'")
    try:
        result = await asyncio.to_thread(verify, database_url)
    finally:
        await db.execute("UPDATE accounts SET balance = balance - 1 WHERE account_id = 'b'")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN  balance == sum(ledger amounts): e.g. ('b'" in result.stdout
    assert "invariants broken" in result.stdout


async def test_verify_accounts_for_every_credit_owed(stub, db, database_url):
    """Debt taken by a commit beyond the lots, by a deduction and paid by a grant passes; a
    debt nothing explains is named."""
    await grant(stub, "a", 10)
    await stub.Adjust(pb.AdjustRequest(account_id="a", mode=pb.ADJUST_MODE_DEDUCT, amount=25,
                                       idempotency_key="d", reason="fix", allow_negative=True))
    await grant(stub, "a", 5)
    result = await asyncio.to_thread(verify, database_url)
    assert result.returncode == 0, result.stdout + result.stderr

    await db.execute("UPDATE accounts SET debt = debt + 1, balance = balance - 1 "
                     "WHERE account_id = 'a'")
    try:
        result = await asyncio.to_thread(verify, database_url)
    finally:
        await db.execute("UPDATE accounts SET debt = debt - 1, balance = balance + 1 "
                         "WHERE account_id = 'a'")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN  debt == taken beyond lots - repaid - forgiven: e.g. ('a', 11)" in (
        result.stdout)
