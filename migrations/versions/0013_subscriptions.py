"""Subscriptions: a plan's allocation granted every period, exactly once.

subscriptions holds each account's subscriptions (at most one ACTIVE per account): the terms
it runs on (`allocation`, as plans.read_allocation reads it, fixed when subscribed or changed
to), its anchor (period 0 starts there), the last period granted and when the next is due
(`next_grant_time`, what the scheduler's index finds), a downgrade waiting for the next period
(`next_plan`, `next_allocation`) and, once set, when it ends (`cancel_time`).

subscription_grants records every allocation granted: one PERIOD row per subscription and
period (the unique index is the exactly-once guard, whichever replica's scheduler grants it),
and UPGRADE rows for an upgrade's prorated credits. `lot_id` is the lot granted (NULL: the
balance was at its maximum and nothing was granted); `carried` what the rollover rule brought
from the period before, inside that lot.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_ALLOCATION = """jsonb_typeof({column}) = 'object' AND {column} ? 'credits'
                  AND {column} ? 'period'"""

UPGRADE = [
    f"""
    CREATE TABLE subscriptions (
        subscription_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account_id text NOT NULL REFERENCES accounts (account_id),
        plan text NOT NULL,
        allocation jsonb NOT NULL,
        anchor timestamptz NOT NULL,
        status text NOT NULL DEFAULT 'ACTIVE',
        last_period integer NOT NULL,
        next_grant_time timestamptz,
        next_plan text,
        next_allocation jsonb,
        cancel_time timestamptz,
        create_time timestamptz NOT NULL DEFAULT credits_now(),
        update_time timestamptz NOT NULL DEFAULT credits_now(),
        CONSTRAINT ck_subscriptions_status CHECK (status IN ('ACTIVE', 'CANCELED')),
        CONSTRAINT ck_subscriptions_next_grant_time
            CHECK ((status = 'ACTIVE') = (next_grant_time IS NOT NULL)),
        CONSTRAINT ck_subscriptions_canceled
            CHECK (status = 'ACTIVE' OR (cancel_time IS NOT NULL AND next_plan IS NULL)),
        CONSTRAINT ck_subscriptions_last_period CHECK (last_period >= -1),
        CONSTRAINT ck_subscriptions_plan
            CHECK (char_length(plan) BETWEEN 1 AND 64
                   AND char_length(coalesce(next_plan, 'x')) BETWEEN 1 AND 64),
        CONSTRAINT ck_subscriptions_allocation CHECK ({_ALLOCATION.format(column="allocation")}),
        CONSTRAINT ck_subscriptions_next_allocation
            CHECK ((next_plan IS NULL) = (next_allocation IS NULL)
                   AND (next_allocation IS NULL
                        OR {_ALLOCATION.format(column="next_allocation")}))
    )""",
    """CREATE UNIQUE INDEX uq_subscriptions_active_account_id ON subscriptions (account_id)
        WHERE status = 'ACTIVE'""",
    """CREATE INDEX ix_subscriptions_due ON subscriptions (next_grant_time)
        WHERE status = 'ACTIVE'""",
    """CREATE INDEX ix_subscriptions_account_id ON subscriptions
        (account_id, subscription_id)""",
    """
    CREATE TABLE subscription_grants (
        grant_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        subscription_id bigint NOT NULL REFERENCES subscriptions (subscription_id),
        period integer NOT NULL,
        kind text NOT NULL,
        plan text NOT NULL,
        credits bigint NOT NULL,
        carried bigint NOT NULL DEFAULT 0,
        lot_id bigint REFERENCES credit_lots (lot_id),
        grant_time timestamptz NOT NULL DEFAULT credits_now(),
        CONSTRAINT ck_subscription_grants_kind CHECK (kind IN ('PERIOD', 'UPGRADE')),
        CONSTRAINT ck_subscription_grants_period CHECK (period >= 0),
        CONSTRAINT ck_subscription_grants_credits
            CHECK (credits >= 0 AND carried >= 0 AND credits + carried > 0),
        CONSTRAINT ck_subscription_grants_lot CHECK (lot_id IS NOT NULL OR kind = 'PERIOD')
    )""",
    """CREATE UNIQUE INDEX uq_subscription_grants_period ON subscription_grants
        (subscription_id, period) WHERE kind = 'PERIOD'""",
    """CREATE INDEX ix_subscription_grants_subscription_id_period ON subscription_grants
        (subscription_id, period)""",
]

DOWNGRADE = ["DROP TABLE subscription_grants", "DROP TABLE subscriptions"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    # Without the tables, an active subscription would silently stop being granted.
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM subscriptions WHERE status = 'ACTIVE') THEN
                RAISE EXCEPTION 'subscriptions are active: cancel them before downgrading';
            END IF;
        END $$""")
    for statement in DOWNGRADE:
        op.execute(statement)
