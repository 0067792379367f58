"""Transfers between accounts: TRANSFER_OUT entries on the giving account, one per lot the
credits left, and TRANSFER_IN entries on the receiving one, one per lot they arrived in (with
the expiry, priority and grant type they had), all sharing one `transfer_id`.

The entry CHECK widens as in 0007 (NOT VALID, then validated). `transfer_id` is a new
nullable column, so adding it rewrites nothing; its index is partial, over transfer entries
only.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_KINDS = """
    (entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL)
    OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL)
    OR (entry_type = 'EXPIRY' AND amount < 0 AND lot_id IS NOT NULL)
    OR (entry_type = 'ADJUSTMENT' AND amount <> 0 AND lot_id IS NOT NULL)"""


def _replace_kinds(kinds: str) -> None:
    op.execute("ALTER TABLE ledger_entries DROP CONSTRAINT ck_ledger_entries_kind")
    op.execute(f"ALTER TABLE ledger_entries ADD CONSTRAINT ck_ledger_entries_kind "
               f"CHECK ({kinds}) NOT VALID")
    op.execute("ALTER TABLE ledger_entries VALIDATE CONSTRAINT ck_ledger_entries_kind")


def upgrade() -> None:
    op.execute("ALTER TABLE ledger_entries ADD COLUMN transfer_id uuid")
    _replace_kinds(_KINDS + """
    OR (entry_type = 'TRANSFER_OUT' AND amount < 0 AND lot_id IS NOT NULL
        AND transfer_id IS NOT NULL)
    OR (entry_type = 'TRANSFER_IN' AND amount > 0 AND lot_id IS NOT NULL
        AND transfer_id IS NOT NULL)""")
    op.execute("CREATE INDEX ix_ledger_entries_transfer_id ON ledger_entries (transfer_id) "
               "WHERE transfer_id IS NOT NULL")


def downgrade() -> None:
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM ledger_entries WHERE transfer_id IS NOT NULL) THEN
                RAISE EXCEPTION 'the ledger has transfer entries: cannot downgrade';
            END IF;
        END $$""")
    op.execute("DROP INDEX ix_ledger_entries_transfer_id")
    _replace_kinds(_KINDS)
    op.execute("ALTER TABLE ledger_entries DROP COLUMN transfer_id")
