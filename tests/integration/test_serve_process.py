"""The real `credits-service` command, run as a subprocess the way an operator runs it: no
database URL, so the embedded PostgreSQL lives in a --data-dir under tmp_path.

Covers start-up (health SERVING, where the data lives), clean exit on SIGTERM/SIGINT with the
embedded PostgreSQL stopped, data kept across restarts (also after a crash), graceful drain of
in-flight calls, `migrate`, the documented flags, and failing fast on a port in use.

Every process started here is killed, and every embedded cluster stopped, by the `launcher`
fixture, whatever the test's outcome. (The autouse fixture of tests/integration/conftest.py also
runs: it needs the shared in-process server and truncates the shared test database, not ours.)
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.cli import MIGRATE_SETTINGS
from credits_service.persistence.embedded import DATABASE_NAME, EmbeddedPostgres
from credits_service.settings import ENV_PREFIX, describe, external_name
from credits_service.transport.grpc.server import SERVICE_NAME
from tests.serve_launcher import (
    NOT_SERVING,
    SERVING,
    STARTUP_TIMEOUT_S,
    Launcher,
    assert_nothing_running_in,
    credits_stub,
    free_port,
)
from tests.support.calls import grant_request

# --- a: start, serve, stop -----------------------------------------------------------------


@pytest.mark.parametrize("signum,event_loop", [
    (signal.SIGTERM, "uvloop"), (signal.SIGINT, "uvloop"), (signal.SIGTERM, "asyncio"),
], ids=["SIGTERM", "SIGINT", "SIGTERM-asyncio-loop"])
async def test_serve_starts_embedded_postgres_and_stops_cleanly_on_signal(
    launcher: Launcher, signum: int, event_loop: str
) -> None:
    grace_s = 5.0
    data_dir = launcher.data_dir()
    started = time.monotonic()
    server = launcher.serve(data_dir, "--event-loop", event_loop, grace_s=grace_s)
    await server.wait_serving()
    assert time.monotonic() - started < STARTUP_TIMEOUT_S

    log = server.log()
    assert str(data_dir) in log, f"the log does not say where the data lives:\n{log}"
    assert f"listening on {server.address}" in log, log

    async with credits_stub(server.address) as stub:
        response = await stub.Grant(grant_request("proc-a", 42, key="proc-a-1"), timeout=10)
        assert response.balance.balance == 42
        balance = await stub.GetBalance(pb.GetBalanceRequest(account_id="proc-a"), timeout=10)
        assert balance.balance.available == 42

    signalled = time.monotonic()
    code = await server.stop(signum, timeout_s=grace_s + 10)
    took = time.monotonic() - signalled
    assert code == 0, server.describe()
    # Nothing was in flight: the exit must not need the whole grace period.
    assert took < grace_s, f"exit took {took:.1f}s, grace is {grace_s}s; {server.describe()}"
    assert "shut down cleanly" in server.log(), server.describe()
    await assert_nothing_running_in(data_dir)


# --- b: data survives restarts -------------------------------------------------------------


async def test_restart_on_the_same_data_dir_keeps_the_data(launcher: Launcher) -> None:
    data_dir = launcher.data_dir()
    first = launcher.serve(data_dir)
    await first.wait_serving()
    async with credits_stub(first.address) as stub:
        await stub.Grant(grant_request("keep", 1234, key="keep-1"), timeout=10)
        reserved = await stub.CheckAndReserve(
            pb.CheckAndReserveRequest(account_id="keep", amount=34, idempotency_key="keep-r"),
            timeout=10,
        )
    assert await first.stop() == 0, first.describe()
    await assert_nothing_running_in(data_dir)

    second = launcher.serve(data_dir)  # a new port too
    await second.wait_serving()
    async with credits_stub(second.address) as stub:
        balance = (await stub.GetBalance(pb.GetBalanceRequest(account_id="keep"),
                                         timeout=10)).balance
        assert (balance.balance, balance.reserved, balance.available) == (1234, 34, 1200)
        # The idempotency keys survived too: a retry is answered, not applied twice.
        again = await stub.Grant(grant_request("keep", 1234, key="keep-1"), timeout=10)
        assert again.balance.balance == 1234
        retried = await stub.CheckAndReserve(
            pb.CheckAndReserveRequest(account_id="keep", amount=34, idempotency_key="keep-r"),
            timeout=10,
        )
        assert retried.reservation.reservation_id == reserved.reservation.reservation_id
    assert await second.stop() == 0, second.describe()
    await assert_nothing_running_in(data_dir)


async def test_restart_after_a_crash_attaches_to_the_orphaned_postgres(
    launcher: Launcher,
) -> None:
    """SIGKILL leaves the embedded PostgreSQL running; the next serve must use it (not fail on
    the existing cluster), keep the data, and stop it on a clean exit."""
    data_dir = launcher.data_dir()
    first = launcher.serve(data_dir)
    await first.wait_serving()
    async with credits_stub(first.address) as stub:
        await stub.Grant(grant_request("crash", 77, key="crash-1"), timeout=10)
    first.popen.kill()
    assert await first.wait_exit(10) == -signal.SIGKILL
    assert (data_dir / "pgdata" / "postmaster.pid").exists(), "expected an orphaned postgres"

    second = launcher.serve(data_dir)
    await second.wait_serving()
    async with credits_stub(second.address) as stub:
        balance = await stub.GetBalance(pb.GetBalanceRequest(account_id="crash"), timeout=10)
        assert balance.balance.balance == 77
    assert await second.stop() == 0, second.describe()
    await assert_nothing_running_in(data_dir)


# --- c: graceful drain ---------------------------------------------------------------------


async def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(launcher: Launcher) -> None:
    grace_s = 4.0
    workers = 48
    accounts = [f"drain-{i}" for i in range(4)]
    data_dir = launcher.data_dir()
    server = launcher.serve(data_dir, "--pool-size", "8", grace_s=grace_s)
    await server.wait_serving()

    outcomes: list[tuple[grpc.StatusCode, str]] = []

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for account in accounts:
            await stub.Grant(grant_request(account, 10**9, key=f"{account}-grant"), timeout=10)

        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert (await asyncio.wait_for(watch.read(), 10)).status == SERVING

        async def worker(index: int) -> None:
            # Same few accounts on purpose: the reservations queue on the account rows, so calls
            # take a while and many are in flight when the signal arrives.
            account = accounts[index % len(accounts)]
            for n in range(1_000_000):
                request = pb.CheckAndReserveRequest(
                    account_id=account, amount=1, idempotency_key=f"w{index}-{n}"
                )
                try:
                    await stub.CheckAndReserve(request, timeout=grace_s + 10)
                    outcomes.append((grpc.StatusCode.OK, ""))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((exc.code(), exc.details() or ""))
                    return  # refused: the server is going away

        tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
        try:
            deadline = time.monotonic() + 20
            while sum(code == grpc.StatusCode.OK for code, _ in outcomes) < 200:
                assert time.monotonic() < deadline, f"load did not get going: {outcomes[:5]}"
                assert not all(task.done() for task in tasks), f"workers died: {outcomes[:5]}"
                await asyncio.sleep(0.02)

            server.popen.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # Health goes NOT_SERVING at once (or the stream is cut with UNAVAILABLE).
            try:
                update = await asyncio.wait_for(watch.read(), 5)
                assert update is not grpc.aio.EOF and update.status == NOT_SERVING, update
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            watch.cancel()  # a Watch is an in-flight call too: do not make the drain wait on it

            code = await server.wait_exit(grace_s + 10)
            took = time.monotonic() - signalled
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert code == 0, server.describe()
    assert took < grace_s + 10
    codes = {code for code, _ in outcomes}
    bad = [(code, details) for code, details in outcomes
           if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)]
    assert not bad, f"calls ended other than OK/UNAVAILABLE: {bad[:10]}; {server.describe()}"
    assert grpc.StatusCode.UNAVAILABLE in codes, "no call was refused after SIGTERM"
    assert "shut down cleanly" in server.log(), server.describe()
    await assert_nothing_running_in(data_dir)

    # Every OK reservation was committed before the exit; an UNAVAILABLE one may or may not have
    # been.
    ok = sum(code == grpc.StatusCode.OK for code, _ in outcomes)
    unavailable = len(outcomes) - ok
    restarted = launcher.serve(data_dir)
    await restarted.wait_serving()
    async with credits_stub(restarted.address) as stub:
        held = 0
        for account in accounts:
            balance = (await stub.GetBalance(pb.GetBalanceRequest(account_id=account),
                                             timeout=10)).balance
            assert balance.reserved == balance.active_reservation_count
            assert balance.available == balance.balance - balance.reserved
            held += balance.active_reservation_count
    assert ok <= held <= ok + unavailable, (ok, unavailable, held)
    assert await restarted.stop() == 0, restarted.describe()


# --- d: migrate and the documented flags ---------------------------------------------------


async def test_migrate_applies_the_schema_and_stops_postgres(launcher: Launcher) -> None:
    data_dir = launcher.data_dir()
    result = await launcher.run("migrate", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database is at the latest migration" in result.stderr, result.stderr
    assert str(data_dir) in result.stderr, result.stderr
    await assert_nothing_running_in(data_dir)

    # Again, with the data dir from the environment this time: nothing left to do, exit 0.
    result = await launcher.run("migrate", env={"CREDITS_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(data_dir) in result.stderr, result.stderr
    await assert_nothing_running_in(data_dir)

    embedded = await asyncio.to_thread(EmbeddedPostgres.start, data_dir / "pgdata")
    try:
        connection = await asyncpg.connect(host=str(embedded.socket_dir), user="postgres",
                                           database=DATABASE_NAME)
        try:
            assert await connection.fetchval("SELECT count(*) FROM alembic_version") == 1
            tables = {row["tablename"] for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        finally:
            await connection.close()
    finally:
        await asyncio.to_thread(embedded.stop)
    assert {"accounts", "ledger_entries", "reservations", "idempotency_keys"} <= tables


def _option_blocks(help_text: str) -> dict[str, str]:
    """argparse help: the text of each option entry, by each of its flags."""
    blocks: dict[str, str] = {}
    current: list[str] = []
    entries: list[list[str]] = []
    for line in help_text.splitlines():
        if re.match(r"^  -", line):
            current = [line]
            entries.append(current)
        elif current and line.startswith("   "):
            current.append(line)
        else:
            current = []
    for entry in entries:
        text = " ".join(" ".join(entry).split())
        for flag in re.findall(r"(?<![\w-])(--?[\w-]+)", entry[0]):
            blocks.setdefault(flag, text)
    return blocks


@pytest.mark.parametrize("command,names", [("serve", None), ("migrate", MIGRATE_SETTINGS)])
async def test_help_documents_each_commands_own_flags_and_their_environment_variables(
    launcher: Launcher, command: str, names: tuple[str, ...] | None
) -> None:
    """Each command's --help exits 0 and lists exactly the settings it reads, each with its
    environment variable: serve all of them, migrate where the database is and the logs."""
    result = await launcher.run(command, "--help", env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    blocks = _option_blocks(result.stdout)
    missing, extra = [], []
    for _, field in describe():
        name = external_name(field)
        flag, env = "--" + name.replace("_", "-"), ENV_PREFIX + name.upper()
        documented = flag in blocks and f"env {env}" in blocks[flag]
        read = names is None or name in names
        if read and not documented:
            missing.append(f"{flag} / {env}")
        if not read and flag in blocks:
            extra.append(flag)
    assert not missing, f"undocumented in `{command} --help`: {missing}\n{result.stdout}"
    assert not extra, f"`{command} --help` lists flags it ignores: {extra}\n{result.stdout}"
    if command == "serve":
        assert "--no-migrate-on-start" in blocks and "--no-reflection" in blocks
        assert "--hold-ttl-max-s" in blocks  # the former name of --reservation-ttl-max-s
    else:
        assert "--listen" not in blocks and "--pool-size" not in blocks


# --- e: port in use ------------------------------------------------------------------------


async def test_port_in_use_fails_fast_with_a_clear_message(launcher: Launcher) -> None:
    data_dir = launcher.data_dir()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = launcher.serve(data_dir, port=port)
        started = time.monotonic()
        code = await server.wait_exit(STARTUP_TIMEOUT_S)
    assert code != 0, server.describe()
    assert time.monotonic() - started < STARTUP_TIMEOUT_S
    assert f"cannot listen on 127.0.0.1:{port}" in server.log(), server.describe()
    await assert_nothing_running_in(data_dir)


async def test_second_instance_fails_on_the_metrics_port_before_starting_anything(
    launcher: Launcher,
) -> None:
    """A second instance with its own data directory and port but the first's metrics port
    fails at once, naming the setting to change, before it starts a database or migrates."""
    metrics = f"127.0.0.1:{free_port()}"
    first = launcher.serve(launcher.data_dir("first"), "--metrics-listen", metrics)
    await first.wait_serving()
    second_dir = launcher.data_dir("second")
    second = launcher.serve(second_dir, "--metrics-listen", metrics)
    started = time.monotonic()
    assert await second.wait_exit(STARTUP_TIMEOUT_S) == 1, second.describe()
    assert time.monotonic() - started < 10, second.describe()
    log = second.log()
    assert f"cannot listen on {metrics} (--metrics-listen / CREDITS_METRICS_LISTEN)" in log, log
    assert not second_dir.exists(), "the second instance started its database"
    assert await first.stop() == 0, first.describe()


async def test_an_unreachable_database_is_named_without_its_password(launcher: Launcher) -> None:
    """A database URL that cannot be reached stops the start with the URL (password hidden),
    the setting and what to check."""
    url = f"postgresql://credits:s3cret-pw@127.0.0.1:{free_port()}/credits"
    server = launcher.serve(launcher.data_dir(), "--database-url", url,
                            "--connect-timeout-s", "2")
    assert await server.wait_exit(STARTUP_TIMEOUT_S) == 1, server.describe()
    log = server.log()
    assert "s3cret-pw" not in log, log
    assert (f"cannot connect to the database at postgresql://credits:***@127.0.0.1:"
            f"{url.rsplit(':', 1)[1].split('/')[0]}/credits (--database-url / "
            "CREDITS_DATABASE_URL)") in log, log
    assert "Check that PostgreSQL is running" in log, log
    assert "Traceback" not in log, log


async def test_second_serve_on_a_busy_port_and_data_dir_leaves_the_first_alone(
    launcher: Launcher,
) -> None:
    """Starting the service twice with the same settings (the defaults, say) must fail the
    second start only, not take the database away from the one already serving."""
    data_dir = launcher.data_dir()
    first = launcher.serve(data_dir)
    await first.wait_serving()
    async with credits_stub(first.address) as stub:
        await stub.Grant(grant_request("twice", 5, key="twice-1"), timeout=10)

        second = launcher.serve(data_dir, port=first.port)
        assert await second.wait_exit(STARTUP_TIMEOUT_S) != 0, second.describe()
        # Refused on the port, checked before the data directory is touched
        assert f"cannot listen on 127.0.0.1:{first.port}" in second.log(), second.describe()

        # ... and on the data directory alone, given a free port
        third = launcher.serve(data_dir)
        assert await third.wait_exit(STARTUP_TIMEOUT_S) != 0, third.describe()
        assert "is in use by another credits-service process" in third.log(), third.describe()

        balance = await stub.GetBalance(pb.GetBalanceRequest(account_id="twice"), timeout=10)
        assert balance.balance.balance == 5
    assert await first.stop() == 0, first.describe()


async def test_migrate_while_serving_leaves_the_server_working(launcher: Launcher) -> None:
    data_dir = launcher.data_dir()
    server = launcher.serve(data_dir)
    await server.wait_serving()
    result = await launcher.run("migrate", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    async with credits_stub(server.address) as stub:
        await stub.Grant(grant_request("live", 5, key="live-1"), timeout=10)
    assert await server.stop() == 0, server.describe()


async def test_sighup_reloads_the_rate_card(launcher: Launcher, tmp_path: Path) -> None:
    card = tmp_path / "rates.toml"
    card.write_text('version = "v1"\n[features.image]\ncost_per_call = 5\n')
    server = launcher.serve(launcher.data_dir(), "--rate-card-file", str(card))
    await server.wait_serving()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        assert (await stub.GetRateCard(pb.GetRateCardRequest())).version == "v1"
        card.write_text('version = "v2"\n[features.image]\ncost_per_call = 6\n')
        server.popen.send_signal(signal.SIGHUP)
        for _ in range(100):
            if (await stub.GetRateCard(pb.GetRateCardRequest())).version == "v2":
                break
            await asyncio.sleep(0.05)
        assert (await stub.GetRateCard(pb.GetRateCardRequest())).features[0].price \
            .cost_per_call == 6
        card.write_text("version = 3\n")  # refused: the version is no name
        server.popen.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "rate card reload refused" in server.log():
                break
            await asyncio.sleep(0.05)
        assert "version: 3 must name this card" in server.log()
        assert (await stub.GetRateCard(pb.GetRateCardRequest())).version == "v2"
    assert await server.stop() == 0
