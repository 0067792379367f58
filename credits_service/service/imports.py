"""Importing existing balances from a CSV file (`credits-service import`): each good row
credits its account once (created on the row's plan, without welcome credits: the imported
balance is what the account had), as a lot of grant type ADMIN_GRANT with one GRANT entry;
rows are checked first and a bad row is reported by line number and writes nothing.

A row is imported once, however often the file is: its import key is its external id when it
has one, else a digest of its account, amount, plan and expiry (so two identical rows without
an external id count once). Rows are written in batches, one transaction each, so an import
stopped half way is finished by running it again.

The file: a header, then one row per line.

    account_id,amount,plan,expire_time,external_id
    user-1,500,pro,,legacy-81723
    user-2,25,,2027-06-30T00:00:00Z,
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from credits_service.domain.model import AMOUNT_MAX, IDENTIFIER_PATTERN
from credits_service.domain.plans import PlanBook
from credits_service.domain.rows import ImportRow

COLUMNS = ("account_id", "amount", "plan", "expire_time", "external_id")
REQUIRED_COLUMNS = ("account_id", "amount")
IMPORT_ACTOR = "import"


@dataclass(slots=True)
class ImportSummary:
    rows: int = 0  # good rows read
    imported: int = 0
    already_imported: int = 0
    credits: int = 0
    accounts_created: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, what is wrong)


class BalanceImportStore(Protocol):
    """Where a batch of rows is written (persistence/imports.py)."""

    async def already_imported(self, keys: list[str]) -> set[str]: ...

    async def existing_accounts(self, account_ids: list[str]) -> set[str]: ...

    async def import_batch(
        self, rows: list[ImportRow], actor: str
    ) -> tuple[list[ImportRow], list[tuple[ImportRow, str]], int]:
        """Write the rows not imported before, in one transaction: (rows imported, rows
        refused with the reason, accounts created)."""


def read_rows(
    lines: Iterable[str], plans: PlanBook, now: datetime
) -> Iterator[ImportRow | tuple[int, str]]:
    """Each row of the file checked: an ImportRow, or (line, what is wrong)."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        yield (1, "the file is empty: expected a header " + ",".join(COLUMNS))
        return
    names = [name.strip() for name in header]
    unknown = [name for name in names if name not in COLUMNS]
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if unknown or missing or len(set(names)) != len(names):
        yield (1, f"the header must name columns among {', '.join(COLUMNS)} (account_id and "
                  f"amount required), each once; found {', '.join(names)}")
        return
    index = {name: names.index(name) for name in names}
    for values in reader:
        line = reader.line_num
        if not values or values == [""]:
            continue
        if len(values) != len(names):
            yield (line, f"{len(values)} values for {len(names)} columns")
            continue
        found = _row(line, {name: values[i].strip() for name, i in index.items()}, plans, now)
        yield found


def _row(line: int, values: dict[str, str], plans: PlanBook, now: datetime) -> ImportRow | tuple[
        int, str]:
    account_id = values["account_id"]
    if not IDENTIFIER_PATTERN.fullmatch(account_id):
        return (line, f"account_id {account_id!r}: 1-128 characters from A-Z a-z 0-9 and '._:@-'")
    amount_text = values["amount"]
    if not (amount_text.isascii() and amount_text.isdigit()) or not (
            1 <= int(amount_text) <= AMOUNT_MAX):
        return (line, f"amount {amount_text!r}: a whole number from 1 to {AMOUNT_MAX}")
    plan = values.get("plan", "")
    if plans.get(plan) is None:
        return (line, f"plan {plan!r}: not one of {', '.join(sorted(plans.plans))}")
    expire_time = None
    expire_text = values.get("expire_time", "")
    if expire_text:
        try:
            expire_time = datetime.fromisoformat(expire_text.replace("Z", "+00:00"))
        except ValueError:
            return (line, f"expire_time {expire_text!r}: an ISO 8601 time, e.g. "
                          "2027-06-30T00:00:00Z")
        if expire_time.tzinfo is None:
            return (line, f"expire_time {expire_text!r}: give its offset (Z for UTC)")
        if expire_time <= now:
            return (line, f"expire_time {expire_text!r}: already passed")
        expire_time = expire_time.astimezone(UTC)
    external_id = values.get("external_id", "")
    if external_id and not IDENTIFIER_PATTERN.fullmatch(external_id):
        return (line, f"external_id {external_id!r}: 1-128 characters from A-Z a-z 0-9 and "
                      "'._:@-'")
    found_plan = plans.get(plan)
    assert found_plan is not None
    plan_name = found_plan.name
    if external_id:
        key = "id:" + external_id
    else:
        content = "\x1f".join((account_id, amount_text, plan_name,
                               expire_time.isoformat() if expire_time else ""))
        key = "row:" + hashlib.sha256(content.encode()).hexdigest()
    return ImportRow(line, account_id, int(amount_text), plan_name, expire_time, key,
                     external_id, found_plan.account_credit_limit)


async def import_rows(
    rows: Iterable[ImportRow | tuple[int, str]],
    store: BalanceImportStore,
    *,
    batch_rows: int,
    dry_run: bool,
    progress: Callable[[ImportSummary], None] = lambda summary: None,
) -> ImportSummary:
    """Import the good rows in batches (or, with `dry_run`, find what would change and write
    nothing); bad rows go to the summary's problems."""
    summary = ImportSummary()
    batch: list[ImportRow] = []
    seen_accounts: set[str] = set()
    by_external_id: dict[str, tuple[str, int, str, object]] = {}

    async def flush() -> None:
        if not batch:
            return
        if dry_run:
            done = await store.already_imported([row.import_key for row in batch])
            fresh = _first_of_each_key(row for row in batch if row.import_key not in done)
            new_ids = sorted({row.account_id for row in fresh} - seen_accounts)
            existing = await store.existing_accounts(new_ids)
            summary.accounts_created += len(set(new_ids) - existing)
            seen_accounts.update(new_ids)
            summary.imported += len(fresh)
            summary.credits += sum(row.amount for row in fresh)
            summary.already_imported += len(batch) - len(fresh)
        else:
            written, refused, created = await store.import_batch(batch, IMPORT_ACTOR)
            summary.imported += len(written)
            summary.credits += sum(row.amount for row in written)
            summary.accounts_created += created
            summary.already_imported += len(batch) - len(written) - len(refused)
            summary.problems.extend((row.line, reason) for row, reason in refused)
        batch.clear()
        progress(summary)

    for row in rows:
        if isinstance(row, tuple) and not isinstance(row, ImportRow):
            summary.problems.append(row)
            continue
        if row.external_id:
            content = (row.account_id, row.amount, row.plan, row.expire_time)
            first = by_external_id.setdefault(row.external_id, content)
            if first != content:
                summary.problems.append((row.line, f"external_id {row.external_id!r} is on an "
                                                   "earlier row with other values"))
                continue
        summary.rows += 1
        batch.append(row)
        if len(batch) >= batch_rows:
            await flush()
    await flush()
    summary.problems.sort()
    return summary


def _first_of_each_key(rows: Iterable[ImportRow]) -> list[ImportRow]:
    found: dict[str, ImportRow] = {}
    for row in rows:
        found.setdefault(row.import_key, row)
    return list(found.values())
