"""Stored idempotent responses become text instead of jsonb.

The service writes each response once and reads it back whole, for a replay; nothing queries
inside it. Storing it as jsonb parsed every response on the way in (about 3.5 us each, a fifth of
what storing a key cost in a batch of holds) and printed it again on the way out. The text holds
the same JSON: the service's own encoding for new keys, jsonb's output for keys stored before.

Run it before starting a version of the service that needs it (`serve` does by default). The
version before it keeps working against the text column: it writes `CAST(... AS jsonb)`, which
PostgreSQL assigns to text as the same JSON, and reads `response::text`. The type change rewrites
the table under an exclusive lock; the table holds only the keys of the retention window.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE idempotency_keys ALTER COLUMN response TYPE text USING response::text"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE idempotency_keys ALTER COLUMN response TYPE jsonb USING response::jsonb"
    )
