"""The engine: SQLAlchemy's bounded pool of asyncpg connections carrying our timeouts."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from credits_service.settings import DatabaseSettings


def asyncpg_url(url: str) -> str:
    """Turn a postgresql:// URL into the SQLAlchemy asyncpg form. A libpq multi-host URL
    (`postgresql://app@db1:5432,db2:5432/credits?target_session_attrs=read-write`, a primary
    and its standbys) becomes SQLAlchemy's form of it, one `host=` a host (each with its
    port, 5432 when left out); asyncpg tries them in order, and the query's
    target_session_attrs picks the one that is writable."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"database URL must start with postgresql://, got {parts.scheme}://")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return urlunsplit(("postgresql+asyncpg", *parts[1:]))
    listed = [h if h.rpartition(":")[2].isdigit() and not h.endswith("]") else f"{h}:5432"
              for h in hosts.split(",")]
    query = "&".join([*(f"host={host}" for host in listed), *filter(None, [parts.query])])
    return urlunsplit(("postgresql+asyncpg", userinfo + at, parts.path, query,
                       parts.fragment))


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", *parts[2:]))


def create_engine(settings: DatabaseSettings, url: str) -> AsyncEngine:
    """The service's one engine: a bounded pool whose sessions carry our timeouts."""
    return create_async_engine(
        asyncpg_url(url),
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=settings.pool_timeout_s,
        # The unit of work begins and ends each transaction itself on the asyncpg connection
        # (unit_of_work.py); SQLAlchemy adds no BEGIN or reset ROLLBACK round trips of its own.
        isolation_level="AUTOCOMMIT",
        connect_args={
            "timeout": settings.connect_timeout_s,
            # Client-side bound on each statement (COMMIT included): a database that stops
            # answering cannot hold a transaction, or its pool connection, for longer.
            "command_timeout": settings.command_timeout_s,
            "server_settings": {
                "application_name": "credits-service",
                "statement_timeout": str(settings.statement_timeout_ms),
                "lock_timeout": str(settings.lock_timeout_ms),
                "idle_in_transaction_session_timeout": str(
                    settings.idle_in_transaction_timeout_ms
                ),
            },
        },
    )
