"""Ledger entries written out as CSV for finance (`credits-service export`), streamed by
PostgreSQL's COPY in constant memory, from one snapshot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

COLUMNS = ("entry_id", "create_time", "account_id", "entry_type", "grant_type", "amount",
           "balance_after", "reservation_id", "lot_id", "transfer_id", "reason", "actor",
           "metadata", "feature", "units", "rate_card_version")

# Entries created in [$1, $2), of one account when $3 is not empty, of USAGE only when $4.
_WHERE = """
     WHERE create_time >= $1 AND create_time < $2
       AND ($3 = '' OR account_id = $3)
       AND (NOT $4 OR entry_type = 'USAGE')"""
_COUNT = f"SELECT count(*) FROM ledger_entries{_WHERE}"
_ROWS = f"""
    SELECT entry_id,
           to_char(create_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           account_id, entry_type, grant_type, amount, balance_after, reservation_id, lot_id,
           transfer_id, reason, actor, metadata::text, feature, units, rate_card_version
      FROM ledger_entries{_WHERE}
     ORDER BY entry_id"""


async def export_entries(
    connection: Any, start: datetime, end: datetime, account_id: str, usage_only: bool,
    write: Callable[[bytes], Awaitable[None]],
) -> int:
    """Stream the entries as CSV (a header, then one row each, oldest first) to `write`, in
    chunks; returns how many rows, counted in the same snapshot."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        total = await connection.fetchval(_COUNT, start, end, account_id, usage_only)
        await write((",".join(COLUMNS) + "\n").encode())
        await connection.copy_from_query(
            _ROWS, start, end, account_id, usage_only, output=write, format="csv")
    return int(total)
