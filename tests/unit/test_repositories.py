"""Repository details that need no database."""

from __future__ import annotations

import pytest

from credits_service.persistence.repositories import _positional


@pytest.mark.parametrize("sql, expected, names", [
    ("SELECT :a", "SELECT $1", ("a",)),
    # a name used twice keeps its number; casts and a literal's colons are left alone
    ("SELECT :a, :b::text, CAST(:a AS int), x::jsonb, '12:30', :c_1 WHERE y = :b",
     "SELECT $1, $2::text, CAST($1 AS int), x::jsonb, '12:30', $3 WHERE y = $2",
     ("a", "b", "c_1")),
    ("SELECT credits_now() AS now", "SELECT credits_now() AS now", ()),
])
def test_named_parameters_are_numbered_for_the_raw_connection(sql, expected, names):
    assert _positional(sql) == (expected, names)
