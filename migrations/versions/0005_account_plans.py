"""Accounts on plans: the plan an account was created on (or moved to).

Plans themselves are configuration (the plans file, docs/accounts.md); an account stores its
plan's name. Accounts that exist already are on the built-in plan `default`. Adding a column
with a constant default changes only the catalog; no row is rewritten.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE accounts
          ADD COLUMN plan text NOT NULL DEFAULT 'default',
          ADD CONSTRAINT ck_accounts_plan_length CHECK (char_length(plan) BETWEEN 1 AND 64)""")


def downgrade() -> None:
    op.execute("ALTER TABLE accounts DROP COLUMN plan")
