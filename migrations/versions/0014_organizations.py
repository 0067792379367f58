"""Organisations: a pool account shared by members, each within its caps.

organizations names each organisation's pool account (any account, one organisation each).
organization_members holds each member (an account belongs to one organisation at most: the
primary key) with its caps (per calendar month UTC, and in all; NULL: none), the credits its
active holds on the pool hold (`held`), and what it used this month (`period_used`, of the
month starting `period_start`) and since it joined (`total_used`). accounts.pool_account_id
is the pool of the organisation the account is a member of, read with the account in the
hold's first statement (no other round trip for non-members).

A hold of a member on its pool is a reservation of the pool account whose member_account_id
is the member. Two row triggers on reservations keep the member's row in step with such
holds whichever path writes them (a group of calls, one alone, the sweeper): placed, it adds
the hold to `held`; ended, it takes it off and adds what was committed to what the member
used, and to usage_members (the pool's usage per UTC hour, member and feature, for
UsageSummary). What a member may hold is decided before, with its row locked: the triggers
only keep the books.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_MONTH = "date_trunc('month', credits_now() AT TIME ZONE 'UTC')::date"

UPGRADE = [
    """
    CREATE TABLE organizations (
        organization_id text PRIMARY KEY,
        pool_account_id text NOT NULL UNIQUE REFERENCES accounts (account_id),
        create_time timestamptz NOT NULL DEFAULT credits_now(),
        CONSTRAINT ck_organizations_organization_id
            CHECK (char_length(organization_id) BETWEEN 1 AND 128)
    )""",
    f"""
    CREATE TABLE organization_members (
        account_id text PRIMARY KEY REFERENCES accounts (account_id),
        organization_id text NOT NULL REFERENCES organizations (organization_id),
        period_cap bigint,
        total_cap bigint,
        held bigint NOT NULL DEFAULT 0,
        period_start date NOT NULL DEFAULT {_MONTH},
        period_used bigint NOT NULL DEFAULT 0,
        total_used bigint NOT NULL DEFAULT 0,
        create_time timestamptz NOT NULL DEFAULT credits_now(),
        update_time timestamptz NOT NULL DEFAULT credits_now(),
        CONSTRAINT ck_organization_members_caps
            CHECK (coalesce(period_cap, 1) BETWEEN 1 AND 1000000000000000
                   AND coalesce(total_cap, 1) BETWEEN 1 AND 1000000000000000
                   AND (period_cap IS NULL OR total_cap IS NULL OR period_cap <= total_cap)),
        CONSTRAINT ck_organization_members_amounts
            CHECK (held >= 0 AND period_used >= 0 AND total_used >= 0)
    )""",
    """CREATE INDEX ix_organization_members_organization_id ON organization_members
        (organization_id, account_id)""",
    "ALTER TABLE accounts ADD COLUMN pool_account_id text",
    "ALTER TABLE reservations ADD COLUMN member_account_id text",
    """
    CREATE TABLE usage_members (
        hour timestamptz NOT NULL,
        pool_account_id text NOT NULL,
        member_account_id text NOT NULL,
        feature text NOT NULL,
        credits bigint NOT NULL,
        calls bigint NOT NULL,
        CONSTRAINT pk_usage_members
            PRIMARY KEY (pool_account_id, hour, member_account_id, feature)
    )""",
    f"""
    CREATE FUNCTION credits_member_books() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE organization_members SET held = held + NEW.amount,
                                            update_time = credits_now()
             WHERE account_id = NEW.member_account_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'a hold of % on pool % has no member row',
                    NEW.member_account_id, NEW.account_id;
            END IF;
        ELSE
            UPDATE organization_members m
               SET held = m.held - OLD.amount,
                   period_used = CASE WHEN m.period_start < {_MONTH} THEN 0
                                      ELSE m.period_used END
                                 + coalesce(NEW.committed_amount, 0),
                   period_start = greatest(m.period_start, {_MONTH}),
                   total_used = m.total_used + coalesce(NEW.committed_amount, 0),
                   update_time = credits_now()
             WHERE account_id = NEW.member_account_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'a hold of % on pool % has no member row',
                    NEW.member_account_id, NEW.account_id;
            END IF;
            IF NEW.status = 'COMMITTED' AND NEW.committed_amount > 0 THEN
                INSERT INTO usage_members AS u (hour, pool_account_id, member_account_id,
                                                feature, credits, calls)
                VALUES (date_trunc('hour', credits_now(), 'UTC'), NEW.account_id,
                        NEW.member_account_id, coalesce(NEW.price ->> 'feature', ''),
                        NEW.committed_amount, 1)
                ON CONFLICT (pool_account_id, hour, member_account_id, feature) DO UPDATE
                   SET credits = u.credits + excluded.credits, calls = u.calls + 1;
            END IF;
        END IF;
        RETURN NULL;
    END $$""",
    """
    CREATE TRIGGER credits_member_hold_placed AFTER INSERT ON reservations
        FOR EACH ROW WHEN (NEW.member_account_id IS NOT NULL)
        EXECUTE FUNCTION credits_member_books()""",
    """
    CREATE TRIGGER credits_member_hold_ended AFTER UPDATE OF status ON reservations
        FOR EACH ROW WHEN (OLD.member_account_id IS NOT NULL AND OLD.status = 'ACTIVE'
                           AND NEW.status <> 'ACTIVE')
        EXECUTE FUNCTION credits_member_books()""",
]

DOWNGRADE = [
    "DROP TRIGGER credits_member_hold_ended ON reservations",
    "DROP TRIGGER credits_member_hold_placed ON reservations",
    "DROP FUNCTION credits_member_books()",
    "DROP TABLE usage_members",
    "ALTER TABLE reservations DROP COLUMN member_account_id",
    "ALTER TABLE accounts DROP COLUMN pool_account_id",
    "DROP TABLE organization_members",
    "DROP TABLE organizations",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    # A pool's holds would lose their member, and members their caps.
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM organizations) THEN
                RAISE EXCEPTION 'organisations exist: remove them before downgrading';
            END IF;
        END $$""")
    for statement in DOWNGRADE:
        op.execute(statement)
