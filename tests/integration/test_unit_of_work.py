"""The unit of work's own transaction handling on the asyncpg connection (the engine runs in
AUTOCOMMIT mode, so nothing else begins or ends transactions)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from credits_service.app import Application
from credits_service.persistence.unit_of_work import SqlUnitOfWork


def _uow(app: Application, *, grouped: bool = False) -> SqlUnitOfWork:
    return SqlUnitOfWork(app.engine, 5000, grouped=grouped)


async def _setting(uow: SqlUnitOfWork, name: str) -> str:
    return await uow._driver.fetchval("SELECT current_setting($1)", name)


async def test_a_group_transaction_keeps_generic_plans_and_others_do_not(
    app: Application,
) -> None:
    async with _uow(app, grouped=True) as uow:
        assert await _setting(uow, "plan_cache_mode") == "force_generic_plan"
        await uow.commit()
    # SET LOCAL ended with the transaction: the pooled connection plans as usual again.
    for _ in range(app.settings.database.pool_size + 1):
        async with _uow(app) as uow:
            assert await _setting(uow, "plan_cache_mode") == "auto"
            await uow.commit()


async def test_statements_run_inside_the_units_transaction(app: Application) -> None:
    """Raw and SQLAlchemy statements alike: a unit left without commit() leaves nothing."""
    async with _uow(app) as uow:
        await uow._driver.execute("CREATE TEMP TABLE uow_probe (n int) ON COMMIT DROP")
        await uow._connection.execute(text("INSERT INTO uow_probe VALUES (1)"))
        assert await uow._driver.fetchval("SELECT txid_current_if_assigned() IS NOT NULL")
        in_block = await uow._driver.fetchval("SELECT count(*) FROM uow_probe")
        assert in_block == 1
    async with _uow(app) as uow:
        assert await uow._driver.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname = 'uow_probe'") == 0
        await uow.commit()


async def test_commit_of_a_failed_transaction_is_an_error_not_a_silent_rollback(
    app: Application,
) -> None:
    async with _uow(app) as uow:
        with pytest.raises(Exception, match="division by zero"):
            await uow._driver.execute("SELECT 1 / 0")
        with pytest.raises(RuntimeError, match="ended as ROLLBACK"):
            await uow.commit()
