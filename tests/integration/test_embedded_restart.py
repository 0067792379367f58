"""A restart of `credits-service serve` after its embedded PostgreSQL was killed with it must
succeed the first time, whatever the pid in the dead postmaster's lock files now names:

- the dead postmaster itself, as a zombie: its parent (init, or a container's first process,
  once pg_ctl has exited) has not reaped it yet;
- a live process that was given the same pid: another program, or another postgres.

Taken for a live postmaster and adopted, such a pid makes `serve` fail to connect; then only a
start after the zombie is reaped succeeds. The data written before the crash must be there.

Every process started here is killed at the end, whatever the outcome; the `launcher` fixture
(tests/serve_launcher.py) also stops any embedded cluster left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from credits.v1 import credits_pb2 as pb
from tests.serve_launcher import (
    REPO_ROOT,
    Launcher,
    ServeProcess,
    assert_nothing_running_in,
    clean_env,
    credits_stub,
    free_port,
)
from tests.support.calls import grant_request

pytestmark = pytest.mark.timeout(60)

# Stands for a parent that does not reap its children, as a container's first process may be.
# It makes itself the subreaper of its descendants, so that postgres, which pg_ctl leaves to the
# nearest subreaper when it exits, becomes its child; it runs the command it is given and waits
# for nothing until SIGTERM, when it reaps whatever has died and exits.
NON_REAPING_PARENT = """
import ctypes, os, signal, subprocess, sys

PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl: {os.strerror(ctypes.get_errno())}")

def reap_and_exit(signum, frame):
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    os._exit(0)

signal.signal(signal.SIGTERM, reap_and_exit)
child = subprocess.Popen(sys.argv[1:])
while True:
    signal.pause()
"""


# --- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_under_non_reaping_parent(
    launcher: Launcher, data_dir: Path
) -> Iterator[ServeProcess]:
    """`credits-service serve` as the child of NON_REAPING_PARENT; its `popen` is the parent,
    which is stopped (reaping its zombies) on exit."""
    port = free_port()
    log_path = launcher.tmp_path / "serve-under-non-reaping-parent.log"
    command = [
        sys.executable, "-c", NON_REAPING_PARENT,
        sys.executable, "-m", "credits_service", "serve",
        "--data-dir", str(data_dir),
        "--listen", f"127.0.0.1:{port}",
        "--metrics-listen", "127.0.0.1:0",
    ]
    with log_path.open("wb") as log:
        parent = subprocess.Popen(command, cwd=REPO_ROOT, env=clean_env(),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    launcher.processes.append(parent)  # killed by the launcher if it outlives us
    try:
        yield ServeProcess(parent, data_dir, port, log_path)
    finally:
        parent.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            parent.wait(timeout=10)


@contextlib.contextmanager
def running(command: list[str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def postmaster_of(data_dir: Path) -> psutil.Process:
    return psutil.Process(int(pid_file_lines(data_dir)[0]))


def service_of(data_dir: Path) -> psutil.Process:
    """The serve process owning `data_dir`: it writes its pid into the lock file it holds."""
    return psutil.Process(int((data_dir / "credits-service.lock").read_text()))


def pid_file_lines(data_dir: Path) -> list[str]:
    return (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()


def lock_files(data_dir: Path) -> list[Path]:
    """postmaster.pid and the lock file of the postmaster's socket: both name its pid."""
    lines = pid_file_lines(data_dir)
    port, socket_dir = lines[3].strip(), Path(lines[4].strip())
    return [data_dir / "pgdata" / "postmaster.pid", socket_dir / f".s.PGSQL.{port}.lock"]


def replace_pid(lock_file: Path, old: int, new: int) -> None:
    first, rest = lock_file.read_text().split("\n", 1)
    assert first.strip() == str(old), f"{lock_file} names pid {first}, not {old}"
    lock_file.write_text(f"{new}\n{rest}")


async def wait_until_dead(process: psutil.Process, *, zombie: bool,
                          timeout_s: float = 5.0) -> None:
    """Until `process` has died: a zombie if `zombie`, else either gone or a zombie."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            assert not zombie, f"pid {process.pid} was reaped: expected a zombie"
            return
        assert time.monotonic() < deadline, f"pid {process.pid} still runs"
        await asyncio.sleep(0.02)


async def grant_before_the_crash(server: ServeProcess, account: str) -> None:
    async with credits_stub(server.address) as stub:
        await stub.Grant(grant_request(account, 55, key=f"{account}-1"), timeout=10)


async def restart_and_check(launcher: Launcher, data_dir: Path, account: str) -> None:
    """The first serve after the crash becomes SERVING and has the data written before it."""
    second = launcher.serve(data_dir)
    await second.wait_serving()
    async with credits_stub(second.address) as stub:
        balance = await stub.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=10)
        assert balance.balance.balance == 55
    assert await second.stop() == 0, second.describe()
    assert "left its lock files" in second.log(), second.describe()


# --- the dead postmaster is a zombie -------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_CHILD_SUBREAPER is Linux only")
async def test_first_restart_succeeds_when_the_killed_postmaster_is_a_zombie(
    launcher: Launcher,
) -> None:
    data_dir = launcher.data_dir()
    with serve_under_non_reaping_parent(launcher, data_dir) as first:
        await first.wait_serving()
        await grant_before_the_crash(first, "zombie")
        postmaster, service = postmaster_of(data_dir), service_of(data_dir)
        assert postmaster.ppid() == first.popen.pid, "postgres was not left to our parent"

        postmaster.kill()
        service.kill()
        await wait_until_dead(postmaster, zombie=True)
        await wait_until_dead(service, zombie=True)
        # What the adoption check used to rely on: psutil calls a zombie running.
        assert postmaster.is_running()

        await restart_and_check(launcher, data_dir, "zombie")
        assert postmaster.status() == psutil.STATUS_ZOMBIE  # not reaped behind our back
    await assert_nothing_running_in(data_dir)


# --- the dead postmaster's pid names a live process ----------------------------------------


@pytest.mark.parametrize("reuser", ["postgres-in-another-directory",
                                    "another-program-in-the-data-directory"])
async def test_first_restart_succeeds_when_the_dead_postmasters_pid_names_another_process(
    launcher: Launcher, tmp_path: Path, reuser: str
) -> None:
    """The process now named by the lock files is left alone, and each of our two tests of a
    live postmaster (its name, its working directory) tells it apart on its own."""
    data_dir = launcher.data_dir()
    first = launcher.serve(data_dir)
    await first.wait_serving()
    await grant_before_the_crash(first, "reused")
    postmaster, files = postmaster_of(data_dir), lock_files(data_dir)

    postmaster.kill()
    first.popen.kill()
    await first.wait_exit(10)
    await wait_until_dead(postmaster, zombie=False)

    if reuser == "postgres-in-another-directory":  # as another cluster's postmaster is
        fake_postgres = tmp_path / "bin" / "postgres"
        fake_postgres.parent.mkdir()
        shutil.copy(shutil.which("sleep") or "/bin/sleep", fake_postgres)
        command, cwd = [str(fake_postgres), "60"], tmp_path
    else:  # as an operator's shell might be
        command, cwd = ["sleep", "60"], data_dir / "pgdata"
    with running(command, cwd) as other:
        for lock_file in files:
            replace_pid(lock_file, postmaster.pid, other.pid)

        await restart_and_check(launcher, data_dir, "reused")
        assert other.poll() is None, "the process named by the stale lock files was signalled"
    await assert_nothing_running_in(data_dir)
