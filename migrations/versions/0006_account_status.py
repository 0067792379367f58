"""Account status (ACTIVE, FROZEN, CLOSED) and the record of changes to accounts' terms.

`accounts.status` is read with the account's row by every call that decides on it, so it
lives on that row. `account_changes` keeps who changed an account's status or plan, when, from
what to what, and why: one row per change, never updated.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE accounts
          ADD COLUMN status text NOT NULL DEFAULT 'ACTIVE',
          ADD CONSTRAINT ck_accounts_status CHECK (status IN ('ACTIVE', 'FROZEN', 'CLOSED'))""")
    op.execute("""
        CREATE TABLE account_changes (
            change_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            account_id text NOT NULL REFERENCES accounts (account_id),
            kind text NOT NULL,
            old_value text NOT NULL,
            new_value text NOT NULL,
            reason text NOT NULL,
            actor text NOT NULL,
            create_time timestamptz NOT NULL DEFAULT credits_now(),
            CONSTRAINT ck_account_changes_kind CHECK (kind IN ('STATUS', 'PLAN')),
            CONSTRAINT ck_account_changes_reason CHECK (char_length(reason) BETWEEN 1 AND 256)
        )""")
    op.execute("CREATE INDEX ix_account_changes_account_id_change_id "
               "ON account_changes (account_id, change_id)")


def downgrade() -> None:
    # Older versions would serve frozen and closed accounts as active ones.
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM accounts WHERE status <> 'ACTIVE') THEN
                RAISE EXCEPTION 'accounts are frozen or closed: cannot downgrade';
            END IF;
        END $$""")
    op.execute("DROP TABLE account_changes")
    op.execute("ALTER TABLE accounts DROP COLUMN status")
