"""Balance alerts and expiring-soon notices, written in the transaction of the change.

Each account's row carries its low-balance rule (`low_balance_credits`, or
`low_balance_percent` of `last_top_up`, the amount of its last GRANT), copied from its plan's
row in plan_alerts (which the server fills from its plans file at start-up) unless
`alert_custom` says it was set for the account; and `alert_state`, where its own available
credits (balance - reserved) stood last: 0 depleted (zero or below), 1 low (below the
threshold), 2 ok; NULL until the account first reaches ok, so a new account's first credits
are no "recovery".

A BEFORE UPDATE row trigger whose WHEN compares the state the row's new values make with the
state it had runs only when the state changes; the row lock makes each crossing one event,
however many calls race. Down across the threshold: LOW_BALANCE; to zero: DEPLETED; up:
BALANCE_RECOVERED. Unlimited accounts have no state (an account made unlimited loses its
level, so it starts afresh if it is limited again). Accounts already there get their last
grant's amount and their level now.

credit_lots.expiry_warned marks a lot whose CREDITS_EXPIRING event the sweeper wrote, so it is
written once per lot.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_UNLIMITED = "1000000000000000"


def _state(row: str) -> str:
    """The alert state the row's values make (0 depleted, 1 low, 2 ok)."""
    available = f"({row}.balance - {row}.reserved)"
    threshold = (f"COALESCE({row}.low_balance_credits, "
                 f"{row}.last_top_up * {row}.low_balance_percent / 100, 0)")
    return (f"(CASE WHEN {available} <= 0 THEN 0 WHEN {available} < {threshold} THEN 1 "
            "ELSE 2 END)")


UPGRADE = [
    """
    CREATE TABLE plan_alerts (
        plan text PRIMARY KEY,
        low_balance_credits bigint CONSTRAINT ck_plan_alerts_credits
            CHECK (low_balance_credits BETWEEN 1 AND 1000000000000),
        low_balance_percent smallint
            CONSTRAINT ck_plan_alerts_percent CHECK (low_balance_percent BETWEEN 1 AND 100),
        CONSTRAINT ck_plan_alerts_one_rule
            CHECK (num_nonnulls(low_balance_credits, low_balance_percent) = 1)
    )""",
    """
    ALTER TABLE accounts
        ADD COLUMN low_balance_credits bigint
            CONSTRAINT ck_accounts_low_balance_credits
            CHECK (low_balance_credits BETWEEN 1 AND 1000000000000),
        ADD COLUMN low_balance_percent smallint
            CONSTRAINT ck_accounts_low_balance_percent
            CHECK (low_balance_percent BETWEEN 1 AND 100),
        ADD COLUMN alert_custom boolean NOT NULL DEFAULT false,
        ADD COLUMN last_top_up bigint NOT NULL DEFAULT 0,
        ADD COLUMN alert_state smallint""",
    # Accounts already there: the amount of their last grant, and their level now (an
    # account never granted anything has none yet)
    """
    UPDATE accounts a SET last_top_up = g.amount
      FROM (SELECT DISTINCT ON (account_id) account_id, amount FROM ledger_entries
             WHERE entry_type = 'GRANT' ORDER BY account_id, entry_id DESC) g
     WHERE a.account_id = g.account_id""",
    f"""
    UPDATE accounts a SET alert_state = {_state('a')}
     WHERE a.credit_limit < {_UNLIMITED} AND a.lifetime_granted > 0""",
    "ALTER TABLE credit_lots ADD COLUMN expiry_warned boolean NOT NULL DEFAULT false",
    """CREATE INDEX ix_credit_lots_expiring ON credit_lots (expire_time)
        WHERE expire_time IS NOT NULL AND expired_time IS NULL AND NOT expiry_warned""",
    # An account's rule: its plan's, unless set for the account
    """
    CREATE FUNCTION credits_alert_rule() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        SELECT p.low_balance_credits, p.low_balance_percent
          INTO NEW.low_balance_credits, NEW.low_balance_percent
          FROM plan_alerts p WHERE p.plan = NEW.plan;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER tg_accounts_a_alert_rule BEFORE INSERT OR UPDATE OF plan, alert_custom
        ON accounts FOR EACH ROW WHEN (NOT NEW.alert_custom)
        EXECUTE FUNCTION credits_alert_rule()""",
    f"""
    CREATE FUNCTION credits_balance_alerts() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        state smallint := {_state('NEW')};
        names text[] := ARRAY['DEPLETED', 'LOW', 'OK'];
        data jsonb;
    BEGIN
        IF NEW.credit_limit >= {_UNLIMITED} THEN
            NEW.alert_state := NULL;  -- unlimited: no level, and none kept for later
            RETURN NEW;
        END IF;
        IF OLD.alert_state IS NOT NULL THEN
            data := jsonb_build_object(
                'available', NEW.balance - NEW.reserved,
                'threshold', COALESCE(NEW.low_balance_credits,
                                      NEW.last_top_up * NEW.low_balance_percent / 100, 0),
                'from', names[OLD.alert_state + 1], 'to', names[state + 1]);
            IF state > OLD.alert_state THEN
                INSERT INTO events (event_type, account_id, data)
                VALUES ('BALANCE_RECOVERED', NEW.account_id, data);
            ELSE
                IF OLD.alert_state = 2 AND (data->>'threshold')::bigint > 0 THEN
                    INSERT INTO events (event_type, account_id, data)
                    VALUES ('LOW_BALANCE', NEW.account_id, data);
                END IF;
                IF state = 0 THEN
                    INSERT INTO events (event_type, account_id, data)
                    VALUES ('DEPLETED', NEW.account_id, data);
                END IF;
            END IF;
        END IF;
        NEW.alert_state := state;
        RETURN NEW;
    END $$""",
    f"""CREATE TRIGGER tg_accounts_b_balance_alerts
        BEFORE UPDATE OF balance, reserved, last_top_up, low_balance_credits,
                         low_balance_percent, plan, alert_custom, credit_limit
        ON accounts FOR EACH ROW
        WHEN ((NEW.credit_limit >= {_UNLIMITED} AND OLD.alert_state IS NOT NULL)
              OR (NEW.credit_limit < {_UNLIMITED}
                  AND {_state('NEW')} IS DISTINCT FROM OLD.alert_state
                  AND (OLD.alert_state IS NOT NULL OR {_state('NEW')} = 2)))
        EXECUTE FUNCTION credits_balance_alerts()""",
    # The last top-up, for percentage rules, of grants written without accounts.credit (the
    # import); a grant through it has set last_top_up already, and this updates nothing
    """
    CREATE FUNCTION credits_last_top_up() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE accounts SET last_top_up = NEW.amount
         WHERE account_id = NEW.account_id AND last_top_up <> NEW.amount;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER tg_ledger_entries_last_top_up AFTER INSERT ON ledger_entries
        FOR EACH ROW WHEN (NEW.entry_type = 'GRANT')
        EXECUTE FUNCTION credits_last_top_up()""",
]

DOWNGRADE = [
    "DROP TRIGGER tg_ledger_entries_last_top_up ON ledger_entries",
    "DROP FUNCTION credits_last_top_up()",
    "DROP TRIGGER tg_accounts_b_balance_alerts ON accounts",
    "DROP FUNCTION credits_balance_alerts()",
    "DROP TRIGGER tg_accounts_a_alert_rule ON accounts",
    "DROP FUNCTION credits_alert_rule()",
    "DROP INDEX ix_credit_lots_expiring",
    "ALTER TABLE credit_lots DROP COLUMN expiry_warned",
    """ALTER TABLE accounts DROP COLUMN alert_state, DROP COLUMN last_top_up,
        DROP COLUMN alert_custom, DROP COLUMN low_balance_percent,
        DROP COLUMN low_balance_credits""",
    "DROP TABLE plan_alerts",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
