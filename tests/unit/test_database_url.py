"""The database URL as the engine takes it: a libpq multi-host URL (a primary and its
standbys, issue 33) becomes SQLAlchemy's form, every host with its port, the query kept."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

from credits_service.persistence.database import asyncpg_url


def _connect_args(url: str) -> dict[str, object]:
    return PGDialect_asyncpg().create_connect_args(make_url(asyncpg_url(url)))[1]


def test_one_host_keeps_its_url():
    assert asyncpg_url("postgresql://app:pw@db1:6432/credits?sslmode=require") == (
        "postgresql+asyncpg://app:pw@db1:6432/credits?sslmode=require")


def test_several_hosts_are_tried_in_order_each_with_its_port():
    args = _connect_args("postgresql://app:pw@db1:5433,db2,10.0.0.3:5434/credits"
                         "?target_session_attrs=read-write")
    assert args == {"database": "credits", "user": "app", "password": "pw",
                    "host": ["db1", "db2", "10.0.0.3"], "port": [5433, 5432, 5434],
                    "target_session_attrs": "read-write"}


def test_other_schemes_are_refused():
    with pytest.raises(ValueError, match="postgresql://"):
        asyncpg_url("mysql://db1/credits")
