"""Refunds of committed usage, and each account's lifetime totals by kind.

- REFUND entries give credits of a committed reservation back (amount > 0, the reservation
  and the lot they went to named); `reservations.refunded_amount` is what was given back so
  far, never above the committed amount (a CHECK, and the compare-and-set that writes it).
- `account_totals` keeps, per account and kind (GRANTED_<grant type>, REFUNDED, ADJUSTED_IN,
  ADJUSTED_OUT, TRANSFERRED_IN, TRANSFERRED_OUT), the credits of its entries of that kind,
  updated by the statement that appends each entry; it starts from the entries there are.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_KINDS = """
    (entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL)
    OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL)
    OR (entry_type = 'EXPIRY' AND amount < 0 AND lot_id IS NOT NULL)
    OR (entry_type = 'ADJUSTMENT' AND amount <> 0 AND lot_id IS NOT NULL)
    OR (entry_type = 'TRANSFER_OUT' AND amount < 0 AND lot_id IS NOT NULL
        AND transfer_id IS NOT NULL)
    OR (entry_type = 'TRANSFER_IN' AND amount > 0 AND lot_id IS NOT NULL
        AND transfer_id IS NOT NULL)"""

# The kind of total each entry counts in (entry_type and the sign of amount, grant_type)
TOTAL_KIND = """
    CASE entry_type
        WHEN 'GRANT' THEN 'GRANTED_' || grant_type
        WHEN 'REFUND' THEN 'REFUNDED'
        WHEN 'ADJUSTMENT' THEN CASE WHEN amount > 0 THEN 'ADJUSTED_IN' ELSE 'ADJUSTED_OUT' END
        WHEN 'TRANSFER_IN' THEN 'TRANSFERRED_IN'
        WHEN 'TRANSFER_OUT' THEN 'TRANSFERRED_OUT'
    END"""


def _replace_kinds(kinds: str) -> None:
    op.execute("ALTER TABLE ledger_entries DROP CONSTRAINT ck_ledger_entries_kind")
    op.execute(f"ALTER TABLE ledger_entries ADD CONSTRAINT ck_ledger_entries_kind "
               f"CHECK ({kinds}) NOT VALID")
    op.execute("ALTER TABLE ledger_entries VALIDATE CONSTRAINT ck_ledger_entries_kind")


def upgrade() -> None:
    _replace_kinds(_KINDS + """
    OR (entry_type = 'REFUND' AND amount > 0 AND reservation_id IS NOT NULL
        AND lot_id IS NOT NULL)""")
    op.execute("CREATE INDEX ix_ledger_entries_refund_reservation_id "
               "ON ledger_entries (reservation_id) WHERE entry_type = 'REFUND'")
    op.execute("ALTER TABLE reservations ADD COLUMN refunded_amount bigint NOT NULL DEFAULT 0")
    op.execute("""
        ALTER TABLE reservations ADD CONSTRAINT ck_reservations_refunded_amount
        CHECK (refunded_amount >= 0 AND refunded_amount <= coalesce(committed_amount, 0))
        NOT VALID""")
    op.execute("ALTER TABLE reservations VALIDATE CONSTRAINT ck_reservations_refunded_amount")
    op.execute("""
        CREATE TABLE account_totals (
            account_id text NOT NULL REFERENCES accounts (account_id),
            kind text NOT NULL,
            credits bigint NOT NULL,
            CONSTRAINT pk_account_totals PRIMARY KEY (account_id, kind),
            CONSTRAINT ck_account_totals_credits CHECK (credits >= 0)
        )""")
    op.execute(f"""
        INSERT INTO account_totals (account_id, kind, credits)
        SELECT account_id, {TOTAL_KIND}, sum(abs(amount))
          FROM ledger_entries
         WHERE entry_type IN ('GRANT', 'ADJUSTMENT', 'TRANSFER_IN', 'TRANSFER_OUT')
         GROUP BY 1, 2""")


def downgrade() -> None:
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM ledger_entries WHERE entry_type = 'REFUND') THEN
                RAISE EXCEPTION 'the ledger has REFUND entries: cannot downgrade';
            END IF;
        END $$""")
    op.execute("DROP TABLE account_totals")
    op.execute("ALTER TABLE reservations DROP COLUMN refunded_amount")
    op.execute("DROP INDEX ix_ledger_entries_refund_reservation_id")
    _replace_kinds(_KINDS)
