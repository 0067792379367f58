"""Accounts, ledger entries, reservations and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Constraint names are fixed here; the invariants they guard are also asserted in code.
UPGRADE = """
CREATE TABLE accounts (
    account_id text PRIMARY KEY,
    balance bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0,
    active_reservation_count bigint NOT NULL DEFAULT 0,
    lifetime_granted bigint NOT NULL DEFAULT 0,
    lifetime_used bigint NOT NULL DEFAULT 0,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_accounts_account_id_length CHECK (char_length(account_id) BETWEEN 1 AND 128),
    CONSTRAINT ck_accounts_reserved_nonnegative CHECK (reserved >= 0),
    CONSTRAINT ck_accounts_available_nonnegative CHECK (balance >= reserved),
    CONSTRAINT ck_accounts_balance_max CHECK (balance <= 1000000000000000),
    CONSTRAINT ck_accounts_active_reservation_count_nonnegative
        CHECK (active_reservation_count >= 0),
    CONSTRAINT ck_accounts_lifetime_nonnegative CHECK (lifetime_granted >= 0 AND lifetime_used >= 0)
);

CREATE TABLE reservations (
    reservation_id uuid PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id),
    amount bigint NOT NULL,
    status text NOT NULL,
    committed_amount bigint,
    create_time timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz NOT NULL,
    finish_time timestamptz,
    metadata jsonb NOT NULL DEFAULT '{}',
    release_reason text NOT NULL DEFAULT '',
    actor text NOT NULL,
    CONSTRAINT ck_reservations_amount_positive CHECK (amount > 0),
    CONSTRAINT ck_reservations_status
        CHECK (status IN ('ACTIVE', 'COMMITTED', 'RELEASED', 'EXPIRED')),
    CONSTRAINT ck_reservations_committed_amount
        CHECK ((status = 'COMMITTED') = (committed_amount IS NOT NULL) AND committed_amount > 0),
    CONSTRAINT ck_reservations_finish_time CHECK ((status = 'ACTIVE') = (finish_time IS NULL)),
    CONSTRAINT ck_reservations_expire_after_create CHECK (expire_time > create_time)
);
-- The sweeper's work list: only ACTIVE holds, ordered by expiry.
CREATE INDEX ix_reservations_active_expire_time ON reservations (expire_time)
    WHERE status = 'ACTIVE';
CREATE INDEX ix_reservations_account_id_create_time ON reservations (account_id, create_time);

CREATE TABLE ledger_entries (
    entry_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id),
    entry_type text NOT NULL,
    grant_type text,
    amount bigint NOT NULL,
    balance_after bigint NOT NULL,
    reservation_id uuid REFERENCES reservations (reservation_id),
    reason text NOT NULL DEFAULT '',
    metadata jsonb NOT NULL DEFAULT '{}',
    actor text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_ledger_entries_kind CHECK (
        (entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL)
        OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL)
    ),
    CONSTRAINT ck_ledger_entries_balance_after_nonnegative CHECK (balance_after >= 0)
);
-- History pages by (account_id, entry_id): entry ids of one account are assigned under the
-- account's row lock, so their order is the commit order and keyset pages never skip a row.
CREATE INDEX ix_ledger_entries_account_id_entry_id ON ledger_entries (account_id, entry_id);
-- At most one USAGE entry per hold, whatever the code does.
CREATE UNIQUE INDEX uq_ledger_entries_usage_reservation_id ON ledger_entries (reservation_id)
    WHERE entry_type = 'USAGE';

CREATE TABLE idempotency_keys (
    scope text NOT NULL,
    idempotency_key text NOT NULL,
    method text NOT NULL,
    request_hash bytea NOT NULL,
    response jsonb,
    create_time timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_idempotency_keys PRIMARY KEY (scope, idempotency_key)
);
CREATE INDEX ix_idempotency_keys_create_time ON idempotency_keys (create_time);
"""

DOWNGRADE = """
DROP TABLE idempotency_keys;
DROP TABLE ledger_entries;
DROP TABLE reservations;
DROP TABLE accounts;
"""


def _statements(script: str) -> list[str]:
    # asyncpg prepares each statement: one command per execute.
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


def upgrade() -> None:
    for statement in _statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(DOWNGRADE):
        op.execute(statement)
