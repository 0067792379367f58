"""What WatchEvents needs of the outbox: a notification per transaction that wrote events, and
the purge's watermark.

A statement-level trigger on events sends NOTIFY credits_events with the writing
transaction's id as payload: PostgreSQL delivers it when, and only if, the transaction
commits, and folds a transaction's identical notifications into one. Streams that have read
everything wait on it instead of polling (docs/events.md); the payload tells a stream whether
an event it has not read yet is still behind its horizon (an older transaction still open).

events_purged holds the position of the last event the retention purge deleted: every event
at or before it is gone, every one after it is kept. A cursor before it is OUT_OF_RANGE, never
a stream that silently skips what was purged.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = [
    """
    CREATE FUNCTION credits_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM new_events) THEN  -- an INSERT of no rows wakes nobody
            PERFORM pg_notify('credits_events', pg_current_xact_id()::text);
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER tg_events_notify AFTER INSERT ON events
        REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION credits_events_notify()""",
    """
    CREATE TABLE events_purged (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        xid bigint NOT NULL,
        event_id bigint NOT NULL
    )""",
    "INSERT INTO events_purged (xid, event_id) VALUES (0, 0)",
]

DOWNGRADE = [
    "DROP TABLE events_purged",
    "DROP TRIGGER tg_events_notify ON events",
    "DROP FUNCTION credits_events_notify()",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
