"""ADJUSTMENT ledger entries: an operator's correction (Adjust), positive into a new lot or
negative out of one lot each.

The new kind widens the entry CHECK: added NOT VALID, then validated, so the scan of existing
entries (which all pass) takes no lock that blocks writes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_KINDS = """
    (entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL)
    OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL)
    OR (entry_type = 'EXPIRY' AND amount < 0 AND lot_id IS NOT NULL)"""


def _replace_kinds(kinds: str) -> None:
    op.execute("ALTER TABLE ledger_entries DROP CONSTRAINT ck_ledger_entries_kind")
    op.execute(f"ALTER TABLE ledger_entries ADD CONSTRAINT ck_ledger_entries_kind "
               f"CHECK ({kinds}) NOT VALID")
    op.execute("ALTER TABLE ledger_entries VALIDATE CONSTRAINT ck_ledger_entries_kind")


def upgrade() -> None:
    _replace_kinds(_KINDS + """
    OR (entry_type = 'ADJUSTMENT' AND amount <> 0 AND lot_id IS NOT NULL)""")


def downgrade() -> None:
    # Entries are the ledger: never deleted, so a ledger with adjustments stays at 0007.
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM ledger_entries WHERE entry_type = 'ADJUSTMENT') THEN
                RAISE EXCEPTION 'the ledger has ADJUSTMENT entries: cannot downgrade';
            END IF;
        END $$""")
    _replace_kinds(_KINDS)
