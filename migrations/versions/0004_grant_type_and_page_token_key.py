"""One word for a lot's grant type, and the key that signs page tokens.

`credit_lots.source_type` becomes `grant_type`, the name the ledger entries and the API use for
the same thing. Versions of the service before this one read and write `source_type`: stop
them before applying it (see docs/operating.md, "Upgrading"). The rename changes only the
catalog; no row is rewritten.

`service_keys` holds secrets every replica shares; this revision stores a random key that
signs History and ListReservations page tokens (HMAC), so a token made by one replica is
accepted by every other, across restarts, and a forged one is refused before it is read.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE credit_lots RENAME COLUMN source_type TO grant_type")
    op.execute("""
        CREATE TABLE service_keys (
            name text PRIMARY KEY,
            key bytea NOT NULL,
            create_time timestamptz NOT NULL DEFAULT credits_now(),
            CONSTRAINT ck_service_keys_key_length CHECK (length(key) >= 32)
        )""")
    # Two version 4 UUIDs from PostgreSQL's cryptographic random source: 244 random bits.
    op.execute("""
        INSERT INTO service_keys (name, key)
        VALUES ('page_tokens', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))""")


def downgrade() -> None:
    op.execute("DROP TABLE service_keys")
    op.execute("ALTER TABLE credit_lots RENAME COLUMN grant_type TO source_type")
