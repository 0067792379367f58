"""The balances file: what a row may say, the import key that makes a row count once, and
the line number of every refused row."""

from __future__ import annotations

from datetime import UTC, datetime

from credits_service.domain.plans import BUILT_IN
from credits_service.domain.rows import ImportRow
from credits_service.service.imports import read_rows

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def rows(text: str):
    return list(read_rows(text.splitlines(keepends=True), BUILT_IN, NOW))


def test_good_rows_and_their_keys():
    found = rows("account_id,amount,plan,expire_time,external_id\n"
                 "u1,5,default,,x-1\n"
                 "u2, 7 ,,2027-01-01T00:00:00Z,\n"
                 "\n"
                 "u2,7,,2027-01-01T00:00:00+00:00,\n")
    assert all(isinstance(row, ImportRow) for row in found)
    first, second, third = found
    assert (first.line, first.import_key, first.plan) == (2, "id:x-1", "default")
    assert second.amount == 7 and second.expire_time == datetime(2027, 1, 1, tzinfo=UTC)
    assert second.import_key == third.import_key and second.import_key.startswith("row:")
    assert third.line == 5
    assert rows("amount,account_id\n3,u9\n")[0].account_id == "u9"  # any column order


def test_bad_rows_are_named_by_line():
    found = rows("account_id,amount,plan,expire_time,external_id\n"
                 "bad id,5,,,\n"
                 "u1,-5,,,\n"
                 "u1,5,gold,,\n"
                 "u1,5,,yesterday,\n"
                 "u1,5,,2020-01-01T00:00:00Z,\n"
                 "u1,5,,2027-01-01T00:00:00,\n"
                 "u1,5,,,has space\n"
                 "u1,5\n")
    assert [problem[0] for problem in found] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "account_id 'bad id'" in found[0][1] and "plan 'gold'" in found[2][1]
    assert "already passed" in found[4][1] and "offset" in found[5][1]
    assert found[7][1] == "2 values for 5 columns"


def test_a_file_without_its_header_is_refused_whole():
    assert rows("") == [(1, "the file is empty: expected a header account_id,amount,plan,"
                            "expire_time,external_id")]
    assert rows("user,credits\nu1,5\n")[0][0] == 1
    assert len(rows("account_id,amount,amount\nu1,5,5\n")) == 1


async def test_an_external_id_on_two_different_rows_refuses_the_second():
    from credits_service.service.imports import import_rows

    class Store:
        async def already_imported(self, keys):
            return set()

        async def existing_accounts(self, account_ids):
            return set()

    summary = await import_rows(
        rows("account_id,amount,external_id\nu1,5,x\nu1,5,x\nu2,5,x\nu3,\u00b2,\n"),
        Store(), batch_rows=10, dry_run=True)
    assert summary.rows == 2 and summary.imported == 1
    assert [line for line, _ in summary.problems] == [4, 5]
