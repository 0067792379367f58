"""Webhooks: where each endpoint's deliveries stand, who delivers them, and what it gave up on.

webhook_endpoints has a row per endpoint name: the position of the last event handled (an
event after it is delivered next, in order) and a lease, so one replica delivers an
endpoint's events at a time; another takes over when the lease runs out. A lease, not a
lock held in a transaction: a delivery may take minutes of retries, and an open transaction
would hold back every event stream's horizon.

webhook_dead_letters keeps each event an endpoint did not take within the retry time, with
the body that was sent (it outlives the event's retention), until an admin redelivers it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = [
    """
    CREATE TABLE webhook_endpoints (
        name text PRIMARY KEY,
        xid bigint NOT NULL,
        event_id bigint NOT NULL,
        lease_owner text NOT NULL DEFAULT '',
        lease_until timestamptz NOT NULL DEFAULT '-infinity',
        update_time timestamptz NOT NULL DEFAULT credits_now()
    )""",
    """
    CREATE TABLE webhook_dead_letters (
        dead_letter_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        endpoint text NOT NULL,
        event_id bigint NOT NULL,
        event_type text NOT NULL,
        account_id text NOT NULL,
        body bytea NOT NULL,
        attempts integer NOT NULL,
        last_error text NOT NULL,
        status text NOT NULL DEFAULT 'DEAD'
            CONSTRAINT ck_webhook_dead_letters_status CHECK (status IN ('DEAD', 'REDELIVERED')),
        create_time timestamptz NOT NULL DEFAULT credits_now(),
        update_time timestamptz NOT NULL DEFAULT credits_now()
    )""",
    """CREATE INDEX ix_webhook_dead_letters_endpoint
        ON webhook_dead_letters (endpoint, dead_letter_id)""",
]

DOWNGRADE = [
    "DROP TABLE webhook_dead_letters",
    "DROP TABLE webhook_endpoints",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
