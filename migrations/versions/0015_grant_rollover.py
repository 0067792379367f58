"""Each subscription grant keeps the rollover rule of the plan it was granted under.

What carries out of a period is decided grant by grant, by the rule of the plan each lot was
granted under: an upgrade's share by the new plan's rule, the period's own allocation by the
rule it was granted with (before, the rule of the plan in force when the next period began
applied to every lot of the period, so an upgrade late in a period changed the rule of the
credits granted before it). Rows there are take their subscription's rule now.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE subscription_grants
            ADD COLUMN rollover text NOT NULL DEFAULT 'none',
            ADD COLUMN rollover_cap bigint NOT NULL DEFAULT 0""")
    op.execute("""
        UPDATE subscription_grants g
           SET rollover = coalesce(s.allocation ->> 'rollover', 'none'),
               rollover_cap = coalesce((s.allocation ->> 'rollover_cap')::bigint, 0)
          FROM subscriptions s WHERE s.subscription_id = g.subscription_id""")
    op.execute("""
        ALTER TABLE subscription_grants
            ALTER COLUMN rollover DROP DEFAULT,
            ALTER COLUMN rollover_cap DROP DEFAULT,
            ADD CONSTRAINT ck_subscription_grants_rollover
                CHECK (rollover IN ('none', 'capped', 'full')
                       AND (rollover = 'capped') = (rollover_cap > 0)
                       AND rollover_cap BETWEEN 0 AND 1000000000000)""")


def downgrade() -> None:
    op.execute("""
        ALTER TABLE subscription_grants DROP COLUMN rollover, DROP COLUMN rollover_cap""")
