"""Credit limits (overdraft) and unlimited accounts: a balance may go below zero.

accounts.credit_limit is what the account may owe (its plan's; 10^15 means unlimited) and
accounts.debt what it owes: the credits used beyond its lots. A balance is now the sum of its
lots' remaining credits minus its debt, so it may be negative. The floor, balance - reserved
>= -credit_limit, is kept by the conditional writes that reserve, capture and deduct (a CHECK
could not let an admin lower a limit below what an account already owes). An ADJUSTMENT
without a lot takes credits into debt (Adjust DEDUCT beyond the lots) or forgives it.

So that `verify` can account for every credit owed: reservations.debt_amount is what a commit
took beyond the lots (into debt), and credit_lots.repaid what a credit paid of the debt before
the rest went into its lot (remaining = amount - repaid at creation).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_KINDS = """
    (entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL)
    OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL)
    OR (entry_type = 'EXPIRY' AND amount < 0 AND lot_id IS NOT NULL)
    OR (entry_type = 'TRANSFER_OUT' AND amount < 0 AND lot_id IS NOT NULL
        AND transfer_id IS NOT NULL)
    OR (entry_type = 'TRANSFER_IN' AND amount > 0 AND lot_id IS NOT NULL
        AND transfer_id IS NOT NULL)
    OR (entry_type = 'REFUND' AND amount > 0 AND reservation_id IS NOT NULL
        AND lot_id IS NOT NULL)"""


def _replace_kinds(kinds: str) -> None:
    op.execute("ALTER TABLE ledger_entries DROP CONSTRAINT ck_ledger_entries_kind")
    op.execute(f"ALTER TABLE ledger_entries ADD CONSTRAINT ck_ledger_entries_kind "
               f"CHECK ({kinds}) NOT VALID")
    op.execute("ALTER TABLE ledger_entries VALIDATE CONSTRAINT ck_ledger_entries_kind")


def upgrade() -> None:
    op.execute("""
        ALTER TABLE accounts
            ADD COLUMN credit_limit bigint NOT NULL DEFAULT 0,
            ADD COLUMN debt bigint NOT NULL DEFAULT 0,
            ADD CONSTRAINT ck_accounts_credit_limit
                CHECK (credit_limit BETWEEN 0 AND 1000000000000000),
            ADD CONSTRAINT ck_accounts_debt CHECK (debt BETWEEN 0 AND 2000000000000000),
            ADD CONSTRAINT ck_accounts_balance_min CHECK (balance >= -1000000000000000),
            DROP CONSTRAINT ck_accounts_available_nonnegative""")
    op.execute("""
        ALTER TABLE reservations
            ADD COLUMN debt_amount bigint NOT NULL DEFAULT 0,
            ADD CONSTRAINT ck_reservations_debt_amount
                CHECK (debt_amount >= 0 AND debt_amount <= coalesce(committed_amount, 0))""")
    op.execute("""
        ALTER TABLE credit_lots
            ADD COLUMN repaid bigint NOT NULL DEFAULT 0,
            ADD CONSTRAINT ck_credit_lots_repaid CHECK (repaid BETWEEN 0 AND amount)""")
    op.execute("""
        ALTER TABLE ledger_entries
            DROP CONSTRAINT ck_ledger_entries_balance_after_nonnegative,
            ADD CONSTRAINT ck_ledger_entries_balance_after_min
                CHECK (balance_after >= -1000000000000000)""")
    _replace_kinds(_KINDS + """
    OR (entry_type = 'ADJUSTMENT' AND amount <> 0)""")


def downgrade() -> None:
    # What is owed, and entries below zero or without a lot, cannot be told without them.
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM accounts WHERE debt > 0 OR balance < reserved
                                                 OR credit_limit > 0)
               OR EXISTS (SELECT FROM ledger_entries
                           WHERE balance_after < 0
                              OR (entry_type = 'ADJUSTMENT' AND lot_id IS NULL)) THEN
                RAISE EXCEPTION 'accounts have credit limits or owe credits: cannot downgrade';
            END IF;
        END $$""")
    _replace_kinds(_KINDS + """
    OR (entry_type = 'ADJUSTMENT' AND amount <> 0 AND lot_id IS NOT NULL)""")
    op.execute("ALTER TABLE credit_lots DROP COLUMN repaid")
    op.execute("ALTER TABLE reservations DROP COLUMN debt_amount")
    op.execute("""
        ALTER TABLE ledger_entries
            DROP CONSTRAINT ck_ledger_entries_balance_after_min,
            ADD CONSTRAINT ck_ledger_entries_balance_after_nonnegative
                CHECK (balance_after >= 0)""")
    op.execute("""
        ALTER TABLE accounts
            DROP CONSTRAINT ck_accounts_balance_min,
            DROP CONSTRAINT ck_accounts_debt,
            DROP CONSTRAINT ck_accounts_credit_limit,
            ADD CONSTRAINT ck_accounts_available_nonnegative CHECK (balance >= reserved),
            DROP COLUMN debt,
            DROP COLUMN credit_limit""")
