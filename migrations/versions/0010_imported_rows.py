"""The rows `credits-service import` has applied, by their import key (the row's external id,
or a digest of its content), so importing a file again credits nothing twice, however long
after (idempotency keys are purged; these are not).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE imported_rows (
            import_key text PRIMARY KEY,
            account_id text NOT NULL REFERENCES accounts (account_id),
            create_time timestamptz NOT NULL DEFAULT credits_now(),
            CONSTRAINT ck_imported_rows_import_key_length
                CHECK (char_length(import_key) BETWEEN 1 AND 200)
        )""")


def downgrade() -> None:
    # Without them, importing a file again would credit its rows twice.
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM imported_rows) THEN
                RAISE EXCEPTION 'rows were imported: cannot downgrade';
            END IF;
        END $$""")
    op.execute("DROP TABLE imported_rows")
