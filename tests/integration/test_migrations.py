"""Migration 0002 moves a ledger written before lots forward: every balance becomes one
never-expiring lot, every active reservation draws from it, and the service then works on it.
Migration 0003 stores idempotent responses as text: stored ones still replay, both ways."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.app import Application, StartupError, migrate
from credits_service.persistence.database import asyncpg_url
from credits_service.persistence.migrations import alembic_config, upgrade_to
from credits_service.persistence.schema import metadata
from tests import grpc_errors, ledger_checks

DATABASE = "credits_migration"

# A ledger as revision 0001 held it: two accounts, grants, a committed reservation, a released
# reservation and two active reservations; one account spent everything.
BEFORE_LOTS = """
INSERT INTO accounts (account_id, balance, reserved, active_reservation_count,
                      lifetime_granted, lifetime_used)
VALUES ('old-1', 70, 15, 2, 100, 30), ('old-2', 0, 0, 0, 5, 5);
INSERT INTO reservations (reservation_id, account_id, amount, status, committed_amount,
                          expire_time, finish_time, actor)
VALUES ('00000000-0000-0000-0000-000000000001', 'old-1', 30, 'COMMITTED', 30,
        now() + interval '1 hour', now(), 'svc'),
       ('00000000-0000-0000-0000-000000000002', 'old-1', 9, 'RELEASED', NULL,
        now() + interval '1 hour', now(), 'svc'),
       ('00000000-0000-0000-0000-000000000003', 'old-1', 10, 'ACTIVE', NULL,
        now() + interval '1 hour', NULL, 'svc'),
       ('00000000-0000-0000-0000-000000000004', 'old-1', 5, 'ACTIVE', NULL,
        now() + interval '1 hour', NULL, 'svc'),
       ('00000000-0000-0000-0000-000000000005', 'old-2', 5, 'COMMITTED', 5,
        now() + interval '1 hour', now(), 'svc');
INSERT INTO ledger_entries (account_id, entry_type, grant_type, amount, balance_after,
                            reservation_id, actor)
VALUES ('old-1', 'GRANT', 'PURCHASE', 100, 100, NULL, 'admin'),
       ('old-1', 'USAGE', NULL, -30, 70, '00000000-0000-0000-0000-000000000001', 'svc'),
       ('old-2', 'GRANT', 'PROMO', 5, 5, NULL, 'admin'),
       ('old-2', 'USAGE', NULL, -5, 0, '00000000-0000-0000-0000-000000000005', 'svc');
"""


@pytest.fixture
async def old_ledger(embedded_postgres) -> str:
    admin = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                  database="postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    finally:
        await admin.close()
    await embedded_postgres.ensure_database(DATABASE)
    url = embedded_postgres.url(DATABASE)
    await asyncio.to_thread(upgrade_to, url, "0001")
    connection = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                       database=DATABASE)
    try:
        await connection.execute(BEFORE_LOTS)
    finally:
        await connection.close()
    return url


async def test_balances_become_one_never_expiring_lot_and_active_reservations_draw_from_it(
        old_ledger, embedded_postgres, test_settings):
    connection = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                       database=DATABASE)
    try:
        balances_before = await connection.fetch(
            "SELECT account_id, balance, reserved FROM accounts ORDER BY 1")
        await asyncio.to_thread(upgrade_to, old_ledger, "head")

        assert await connection.fetch(
            "SELECT account_id, balance, reserved FROM accounts ORDER BY 1") == balances_before
        lots = await connection.fetch(
            "SELECT account_id, grant_type, priority, expire_time, amount, remaining, held "
            "FROM credit_lots")
        assert [tuple(lot) for lot in lots] == [("old-1", None, 50, None, 70, 70, 15)]
        draws = await connection.fetch(
            "SELECT reservation_id::text, held, consumed FROM reservation_lots ORDER BY 1")
        assert [tuple(d) for d in draws] == [
            ("00000000-0000-0000-0000-000000000003", 10, None),
            ("00000000-0000-0000-0000-000000000004", 5, None)]
        await ledger_checks.assert_invariants(connection)

        # The service works on the migrated ledger: commit one old reservation for more than it
        # held, release the other, grant and spend again.
        app = await Application.start(test_settings.replace(database_url=old_ledger))
        try:
            async with app_channel(app) as stub:
                committed = await stub.Commit(pb.CommitRequest(
                    reservation_id="00000000-0000-0000-0000-000000000003", amount=12))
                assert [(d.held, d.consumed) for d in committed.reservation.draws] == [(10, 12)]
                await stub.Release(pb.ReleaseRequest(
                    reservation_id="00000000-0000-0000-0000-000000000004"))
                await stub.Grant(pb.GrantRequest(account_id="old-2", amount=3,
                                                 type=pb.GRANT_TYPE_PURCHASE,
                                                 idempotency_key=str(uuid.uuid4())))
                report = await stub.GetBalance(pb.GetBalanceRequest(account_id="old-1"))
                assert (report.balance.balance, report.balance.reserved) == (58, 0)
                assert [(lot.remaining, lot.grant_type) for lot in report.lots] == [
                    (58, pb.GRANT_TYPE_UNSPECIFIED)]
        finally:
            await app.stop()
        await ledger_checks.assert_invariants(connection)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def app_channel(app: Application) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield credits_pb2_grpc.CreditsServiceStub(channel)


async def test_downgrade_to_0001_refuses_once_credits_have_expired(old_ledger, embedded_postgres):
    await asyncio.to_thread(upgrade_to, old_ledger, "head")
    config = alembic_config(old_ledger)
    await asyncio.to_thread(command.downgrade, config, "0001")  # nothing expired yet: fine
    await asyncio.to_thread(upgrade_to, old_ledger, "head")
    connection = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                       database=DATABASE)
    try:
        lot_id = await connection.fetchval("SELECT lot_id FROM credit_lots")
        await connection.execute(
            "INSERT INTO ledger_entries (account_id, entry_type, amount, balance_after, actor, "
            "lot_id) VALUES ('old-1', 'EXPIRY', -1, 69, 'system', $1)", lot_id)
    finally:
        await connection.close()
    with pytest.raises(Exception, match="EXPIRY entries"):
        await asyncio.to_thread(command.downgrade, config, "0001")


async def test_stored_responses_replay_alike_across_0003_down_and_up(
        old_ledger, embedded_postgres, test_settings):
    await asyncio.to_thread(upgrade_to, old_ledger, "head")
    app_settings = test_settings.replace(database_url=old_ledger)
    grant = pb.GrantRequest(account_id="old-2", amount=7, type=pb.GRANT_TYPE_PROMO,
                            idempotency_key="grant-1")
    reserve = pb.CheckAndReserveRequest(account_id="old-1", amount=5, idempotency_key="reserve-1",
                                        metadata={"model": "ünïcode \"quoted\""})
    declined = pb.CheckAndReserveRequest(account_id="old-1", amount=10**6,
                                         idempotency_key="reserve-2")

    async def answers() -> tuple[object, ...]:
        app = await Application.start(app_settings)
        try:
            async with app_channel(app) as stub:
                return (await stub.Grant(grant), await stub.CheckAndReserve(reserve),
                        await grpc_errors.expect_error(stub.CheckAndReserve(declined)))
        finally:
            await app.stop()

    first = await answers()
    connection = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                       database=DATABASE)
    column_type = ("SELECT data_type FROM information_schema.columns "
                   "WHERE table_name = 'idempotency_keys' AND column_name = 'response'")
    try:
        assert await connection.fetchval(column_type) == "text"
        await asyncio.to_thread(command.downgrade, alembic_config(old_ledger), "0002")
        assert await connection.fetchval(column_type) == "jsonb"
        assert await connection.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE jsonb_typeof(response) = 'object'") == 3
        await asyncio.to_thread(upgrade_to, old_ledger, "head")
        assert await connection.fetchval(column_type) == "text"
        counts = "SELECT (SELECT count(*) FROM reservations), (SELECT count(*) FROM ledger_entries)"
        before = await connection.fetchrow(counts)

        assert await answers() == first  # replayed from the keys stored as jsonb, then text
        assert await connection.fetchrow(counts) == before
        assert first[2].reason == "INSUFFICIENT_CREDITS"
    finally:
        await connection.close()


async def test_a_migration_the_role_may_not_run_stops_the_start_saying_what_to_do(
        embedded_postgres):
    """A role that does not own the schema cannot migrate (PostgreSQL 15 and later give
    PUBLIC no CREATE on it): the start stops with the database named, the cause, and what to
    do, not a traceback."""
    admin = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                  database="postgres")
    try:
        await admin.execute("DROP DATABASE IF EXISTS credits_unowned")
        await admin.execute("DROP ROLE IF EXISTS credits_runtime")
        await admin.execute("CREATE ROLE credits_runtime LOGIN")
        await admin.execute("CREATE DATABASE credits_unowned")
    finally:
        await admin.close()
    url = (f"postgresql://credits_runtime@/credits_unowned?host="
           f"{embedded_postgres.socket_dir}")
    with pytest.raises(StartupError) as raised:
        await migrate(url)
    message = str(raised.value)
    assert message.startswith("migrating the database at postgresql://credits_runtime@"), message
    assert "permission denied" in message and "--no-migrate-on-start" in message, message
    assert raised.value.exit_code == 1


async def test_the_declared_schema_is_what_the_migrations_build(database_url):
    """persistence/schema.py (Alembic's target) and the migrations agree on every table,
    column, type, nullability, default, index and key: autogenerate finds nothing to do.
    Alembic does not compare CHECK constraints: schema.py's copies of them go unchecked."""
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True,
                                                       "compare_server_default": True}),
                metadata))
    finally:
        await engine.dispose()
    assert differences == []


async def test_downgrades_that_would_lose_account_state_or_imports_are_refused(
        old_ledger, embedded_postgres):
    await asyncio.to_thread(upgrade_to, old_ledger, "head")
    config = alembic_config(old_ledger)
    connection = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                       database=DATABASE)
    try:
        await connection.execute(
            "INSERT INTO imported_rows (import_key, account_id) VALUES ('id:x', 'old-1')")
        with pytest.raises(Exception, match="rows were imported"):
            await asyncio.to_thread(command.downgrade, config, "0009")
        await connection.execute("DELETE FROM imported_rows")
        await connection.execute("UPDATE accounts SET status = 'FROZEN' WHERE account_id = 'old-1'")
        with pytest.raises(Exception, match="frozen or closed"):
            await asyncio.to_thread(command.downgrade, config, "0005")
        await connection.execute("UPDATE accounts SET status = 'ACTIVE'")
        await asyncio.to_thread(command.downgrade, config, "0005")  # now it may
    finally:
        await connection.close()


async def test_0018_gives_accounts_already_there_their_last_top_up_and_level(
        old_ledger, embedded_postgres):
    await asyncio.to_thread(upgrade_to, old_ledger, "head")
    connection = await asyncpg.connect(host=str(embedded_postgres.socket_dir), user="postgres",
                                       database=DATABASE)
    try:
        rows = await connection.fetch(
            "SELECT account_id, last_top_up, alert_state FROM accounts ORDER BY account_id")
        assert [tuple(r) for r in rows] == [("old-1", 100, 2), ("old-2", 5, 0)]
        # old-1's first change after the upgrade that empties it is a crossing
        await connection.execute(
            "UPDATE accounts SET reserved = balance WHERE account_id = 'old-1'")
        assert await connection.fetchval(
            "SELECT array_agg(event_type ORDER BY event_id) FROM events "
            "WHERE account_id = 'old-1'") == ["DEPLETED"]
    finally:
        await connection.close()
