"""Credit lots, what each hold drew from them, EXPIRY entries and the service clock.

Balances granted before this revision become one never-expiring lot per account (priority 50,
no source type), and every active hold is recorded as drawn from it: no balance changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
-- The service's clock: the database clock, moved forward by the offset a transaction sets
-- (tests advance time this way; the service never sets it in production).
CREATE FUNCTION credits_now() RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT now() + coalesce(nullif(current_setting('credits.clock_offset_ms', true), ''), '0')
                   ::bigint * interval '1 millisecond'
$$;
ALTER TABLE accounts ALTER COLUMN create_time SET DEFAULT credits_now();
ALTER TABLE accounts ALTER COLUMN update_time SET DEFAULT credits_now();
ALTER TABLE reservations ALTER COLUMN create_time SET DEFAULT credits_now();
ALTER TABLE ledger_entries ALTER COLUMN create_time SET DEFAULT credits_now();
ALTER TABLE idempotency_keys ALTER COLUMN create_time SET DEFAULT credits_now();

ALTER TABLE accounts ADD COLUMN lifetime_expired bigint NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD CONSTRAINT ck_accounts_lifetime_expired_nonnegative
    CHECK (lifetime_expired >= 0);

-- remaining: credits neither consumed nor written off, held ones included.
-- held: the part of remaining that active holds drew. An expired lot keeps only held credits.
CREATE TABLE credit_lots (
    lot_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id),
    source_type text,
    priority integer NOT NULL,
    expire_time timestamptz,
    amount bigint NOT NULL,
    remaining bigint NOT NULL,
    held bigint NOT NULL DEFAULT 0,
    create_time timestamptz NOT NULL DEFAULT credits_now(),
    expired_time timestamptz,
    CONSTRAINT ck_credit_lots_amounts
        CHECK (amount > 0 AND held >= 0 AND remaining >= held AND remaining <= amount),
    CONSTRAINT ck_credit_lots_priority CHECK (priority BETWEEN 0 AND 100),
    CONSTRAINT ck_credit_lots_expired
        CHECK (expired_time IS NULL OR (expire_time IS NOT NULL AND remaining = held))
);
-- Consumption order among the lots that still hold credits.
CREATE INDEX ix_credit_lots_consumption ON credit_lots (account_id, priority, expire_time, lot_id)
    WHERE remaining > 0;
-- The sweeper's work list, and each account's due lots.
CREATE INDEX ix_credit_lots_due ON credit_lots (expire_time)
    WHERE expired_time IS NULL AND expire_time IS NOT NULL;
CREATE INDEX ix_credit_lots_account_due ON credit_lots (account_id, expire_time)
    WHERE expired_time IS NULL AND expire_time IS NOT NULL;

-- ListReservations pages an account's holds newest first.
DROP INDEX ix_reservations_account_id_create_time;
CREATE INDEX ix_reservations_account_id_create_time_id
    ON reservations (account_id, create_time DESC, reservation_id DESC);

-- Hold provenance: what each hold drew from each lot, and what its Commit consumed there.
CREATE TABLE reservation_lots (
    reservation_id uuid NOT NULL REFERENCES reservations (reservation_id),
    lot_id bigint NOT NULL REFERENCES credit_lots (lot_id),
    held bigint NOT NULL,
    consumed bigint,
    CONSTRAINT pk_reservation_lots PRIMARY KEY (reservation_id, lot_id),
    CONSTRAINT ck_reservation_lots_amounts
        CHECK (held >= 0 AND coalesce(consumed, 0) >= 0 AND (held > 0 OR consumed > 0))
);

ALTER TABLE ledger_entries ADD COLUMN lot_id bigint REFERENCES credit_lots (lot_id);
ALTER TABLE ledger_entries DROP CONSTRAINT ck_ledger_entries_kind;
ALTER TABLE ledger_entries ADD CONSTRAINT ck_ledger_entries_kind CHECK (
    (entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL)
    OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL)
    OR (entry_type = 'EXPIRY' AND amount < 0 AND lot_id IS NOT NULL)
);
-- One lot per GRANT entry; a lot is written off once on its own, and once per hold that gives
-- credits back to it after it expired, whatever the code does.
CREATE UNIQUE INDEX uq_ledger_entries_grant_lot_id ON ledger_entries (lot_id)
    WHERE entry_type = 'GRANT';
CREATE UNIQUE INDEX uq_ledger_entries_expiry_lot_id ON ledger_entries (lot_id)
    WHERE entry_type = 'EXPIRY' AND reservation_id IS NULL;
CREATE UNIQUE INDEX uq_ledger_entries_expiry_lot_id_reservation_id
    ON ledger_entries (lot_id, reservation_id)
    WHERE entry_type = 'EXPIRY' AND reservation_id IS NOT NULL;

-- Existing balances: one never-expiring lot per account, drawn from by every active hold.
INSERT INTO credit_lots (account_id, source_type, priority, expire_time, amount, remaining,
                         held, create_time)
SELECT account_id, NULL, 50, NULL, balance, balance, reserved, create_time
  FROM accounts WHERE balance > 0;
INSERT INTO reservation_lots (reservation_id, lot_id, held)
SELECT r.reservation_id, l.lot_id, r.amount
  FROM reservations r JOIN credit_lots l USING (account_id)
 WHERE r.status = 'ACTIVE'
"""

DOWNGRADE = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM ledger_entries WHERE entry_type = 'EXPIRY') THEN
        RAISE EXCEPTION 'cannot downgrade below 0002: the ledger holds EXPIRY entries';
    END IF;
END
$$;
DROP INDEX uq_ledger_entries_expiry_lot_id_reservation_id;
DROP INDEX uq_ledger_entries_expiry_lot_id;
DROP INDEX uq_ledger_entries_grant_lot_id;
ALTER TABLE ledger_entries DROP CONSTRAINT ck_ledger_entries_kind;
ALTER TABLE ledger_entries ADD CONSTRAINT ck_ledger_entries_kind CHECK (
    (entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL)
    OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL)
);
ALTER TABLE ledger_entries DROP COLUMN lot_id;
DROP TABLE reservation_lots;
DROP INDEX ix_reservations_account_id_create_time_id;
CREATE INDEX ix_reservations_account_id_create_time ON reservations (account_id, create_time);
DROP TABLE credit_lots;
ALTER TABLE accounts DROP COLUMN lifetime_expired;
ALTER TABLE idempotency_keys ALTER COLUMN create_time SET DEFAULT now();
ALTER TABLE ledger_entries ALTER COLUMN create_time SET DEFAULT now();
ALTER TABLE reservations ALTER COLUMN create_time SET DEFAULT now();
ALTER TABLE accounts ALTER COLUMN update_time SET DEFAULT now();
ALTER TABLE accounts ALTER COLUMN create_time SET DEFAULT now();
DROP FUNCTION credits_now()
"""


def _statements(script: str) -> list[str]:
    # One command per execute (asyncpg prepares each). A dollar-quoted body holds semicolons, so
    # a statement ends at a ";" only outside $$ ... $$.
    statements, current, quoted = [], [], False
    for line in script.splitlines():
        if not quoted and line.lstrip().startswith("--"):
            continue
        current.append(line)
        quoted ^= line.count("$$") % 2 == 1
        if not quoted and line.rstrip().endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    statements.append("\n".join(current))
    return [statement.strip() for statement in statements if statement.strip()]


def upgrade() -> None:
    for statement in _statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(DOWNGRADE):
        op.execute(statement)
