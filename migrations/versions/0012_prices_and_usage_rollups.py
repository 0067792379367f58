"""Holds priced by a rate card, usage entries that say what they were for, and usage rollups.

reservations.price is the price a hold of a feature was placed at (NULL: a hold of an amount):
a Commit with actual units pays it, whatever card is in force by then. A USAGE entry carries
the feature, the units and the card version it was priced by (NULL for usage of an amount).

Usage summaries read three rollups of the USAGE entries instead of the ledger, each kept by a
statement-level trigger in the transaction that writes the entries, so they can never disagree
with them (`verify` checks that they do not):
- usage_hours: per account, UTC hour and feature ('' for usage of an amount); one account's
  or a few accounts' usage at any bucket size;
- usage_days and usage_months: per UTC day (month), account and feature; the top accounts
  of a range: its whole months from usage_months, the other whole days from usage_days, the
  hours left from usage_hours;
- usage_shards: per UTC hour, plan (the account's when it used them) and feature, across all
  accounts: all accounts' usage, and each plan's. Each transaction adds to the rows of its
  own shard (its server process's id modulo 1,024), so that concurrent transactions of
  different accounts do not wait on one row per hour; the sweeper folds the shards of hours
  past into one row (shard -1), so that a summary reads one row per hour, plan and feature.
Units are numeric: summed, they may pass what bigint holds.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ROLLUP = """
    INSERT INTO {table} AS u ({keys}, credits, units, calls)
    SELECT {values}, -sum(e.amount), coalesce(sum(e.units), 0), count(*)
      FROM new_entries e {join} WHERE e.entry_type = 'USAGE'
     GROUP BY {groups} ORDER BY {groups}
    ON CONFLICT ({keys}) DO UPDATE
       SET credits = u.credits + excluded.credits, units = u.units + excluded.units,
           calls = u.calls + excluded.calls"""

_HOUR = "date_trunc('hour', e.create_time, 'UTC')"
_DAY = "(e.create_time AT TIME ZONE 'UTC')::date"
# Dates of UTC days and months, whatever the session's TimeZone
_MONTH = "date_trunc('month', e.create_time AT TIME ZONE 'UTC')::date"
_FEATURE = "coalesce(e.feature, '')"
_ACCOUNT = "JOIN accounts a ON a.account_id = e.account_id"
_SHARD = "(pg_backend_pid() % 1024)::smallint"

_TABLES = """
CREATE TABLE usage_hours (
    account_id text NOT NULL,
    hour timestamptz NOT NULL,
    feature text NOT NULL,
    credits bigint NOT NULL,
    units numeric NOT NULL,
    calls bigint NOT NULL,
    CONSTRAINT pk_usage_hours PRIMARY KEY (account_id, hour, feature)
);
CREATE TABLE usage_days (
    day date NOT NULL,
    account_id text NOT NULL,
    feature text NOT NULL,
    credits bigint NOT NULL,
    units numeric NOT NULL,
    calls bigint NOT NULL,
    CONSTRAINT pk_usage_days PRIMARY KEY (day, account_id, feature)
);
CREATE TABLE usage_months (
    month date NOT NULL,
    account_id text NOT NULL,
    feature text NOT NULL,
    credits bigint NOT NULL,
    units numeric NOT NULL,
    calls bigint NOT NULL,
    CONSTRAINT pk_usage_months PRIMARY KEY (month, account_id, feature)
);
CREATE TABLE usage_shards (
    hour timestamptz NOT NULL,
    plan text NOT NULL,
    feature text NOT NULL,
    shard smallint NOT NULL,
    credits bigint NOT NULL,
    units numeric NOT NULL,
    calls bigint NOT NULL,
    CONSTRAINT pk_usage_shards PRIMARY KEY (hour, plan, feature, shard)
);
CREATE INDEX ix_usage_hours_hour ON usage_hours (hour);
CREATE INDEX ix_usage_shards_uncompacted ON usage_shards (hour) WHERE shard >= 0"""

UPGRADE = [
    "ALTER TABLE reservations ADD COLUMN price jsonb",
    """ALTER TABLE ledger_entries
        ADD COLUMN feature text,
        ADD COLUMN units bigint,
        ADD COLUMN rate_card_version text,
        ADD CONSTRAINT ck_ledger_entries_feature CHECK (
            feature IS NULL OR (entry_type = 'USAGE' AND char_length(feature) BETWEEN 1 AND 64
                                AND units BETWEEN 0 AND 1000000000000000
                                AND rate_card_version IS NOT NULL))""",
    *_TABLES.split(";"),
    f"""CREATE FUNCTION credits_roll_up_usage() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        {_ROLLUP.format(table="usage_hours", keys="account_id, hour, feature",
                        values=f"e.account_id, {_HOUR}, {_FEATURE}", groups="1, 2, 3",
                        join="")};
        {_ROLLUP.format(table="usage_days", keys="day, account_id, feature",
                        values=f"{_DAY}, e.account_id, {_FEATURE}", groups="1, 2, 3",
                        join="")};
        {_ROLLUP.format(table="usage_months", keys="month, account_id, feature",
                        values=f"{_MONTH}, e.account_id, {_FEATURE}", groups="1, 2, 3",
                        join="")};
        {_ROLLUP.format(table="usage_shards", keys="hour, plan, feature, shard",
                        values=f"{_HOUR}, a.plan, {_FEATURE}, {_SHARD}",
                        groups="1, 2, 3, 4", join=_ACCOUNT)};
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER tg_ledger_entries_usage_rollups AFTER INSERT ON ledger_entries
        REFERENCING NEW TABLE AS new_entries
        FOR EACH STATEMENT EXECUTE FUNCTION credits_roll_up_usage()""",
    # The usage written before the rollups
    f"""INSERT INTO usage_hours (account_id, hour, feature, credits, units, calls)
        SELECT e.account_id, {_HOUR}, '', -sum(e.amount), 0, count(*)
          FROM ledger_entries e WHERE e.entry_type = 'USAGE' GROUP BY 1, 2""",
    f"""INSERT INTO usage_days (day, account_id, feature, credits, units, calls)
        SELECT {_DAY}, e.account_id, '', -sum(e.amount), 0, count(*)
          FROM ledger_entries e WHERE e.entry_type = 'USAGE' GROUP BY 1, 2""",
    f"""INSERT INTO usage_months (month, account_id, feature, credits, units, calls)
        SELECT {_MONTH}, e.account_id, '', -sum(e.amount), 0, count(*)
          FROM ledger_entries e WHERE e.entry_type = 'USAGE' GROUP BY 1, 2""",
    f"""INSERT INTO usage_shards (hour, plan, feature, shard, credits, units, calls)
        SELECT {_HOUR}, a.plan, '', -1, -sum(e.amount), 0, count(*)
          FROM ledger_entries e JOIN accounts a ON a.account_id = e.account_id
         WHERE e.entry_type = 'USAGE' GROUP BY 1, 2""",
]

DOWNGRADE = [
    "DROP TRIGGER tg_ledger_entries_usage_rollups ON ledger_entries",
    "DROP FUNCTION credits_roll_up_usage()",
    "DROP TABLE usage_shards",
    "DROP TABLE usage_months",
    "DROP TABLE usage_days",
    "DROP TABLE usage_hours",
    """ALTER TABLE ledger_entries
        DROP CONSTRAINT ck_ledger_entries_feature,
        DROP COLUMN rate_card_version,
        DROP COLUMN units,
        DROP COLUMN feature""",
    "ALTER TABLE reservations DROP COLUMN price",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    # A hold of a feature still active would be committed for its amount only, losing its
    # price: refuse while there is one.
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM reservations WHERE status = 'ACTIVE' AND price IS NOT NULL)
            THEN
                RAISE EXCEPTION 'holds of a feature are active: cannot downgrade';
            END IF;
        END $$""")
    for statement in DOWNGRADE:
        op.execute(statement)
