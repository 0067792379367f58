"""The events outbox: every change to credits writes its events in its own transaction.

events holds one row per thing that happened (docs/events.md): a ledger entry (granted,
allocation granted, committed, credits expired, refunded, transferred, adjusted), a hold
placed, released or expired, an account created, frozen, closed, reactivated or moved to
another plan. Statement-level triggers write them, one INSERT per statement that changed
something, in the transaction of the change: an event whose change rolled back never exists,
and one whose change committed is never lost.

Positions respect commit order. Identity ids do not (a transaction may take id N-1 and commit
after another took N and committed), so an event's position is (xid, event_id): the writing
transaction's id (pg_current_xact_id, 64 bits, never wrapping) and its id. A reader reads only
events of transactions older than its snapshot's xmin, all of which have ended, so an event
it has not read yet can only come later in position, never behind a cursor already handed
out.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_INSERT = """INSERT INTO events (event_type, account_id, data)"""

UPGRADE = [
    """
    CREATE TABLE events (
        event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
        event_type text NOT NULL,
        account_id text NOT NULL,
        data jsonb NOT NULL,
        create_time timestamptz NOT NULL DEFAULT credits_now()
    )""",
    "CREATE INDEX ix_events_position ON events (xid, event_id)",
    f"""
    CREATE FUNCTION credits_entry_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        {_INSERT}
        SELECT CASE e.entry_type
                   WHEN 'GRANT' THEN CASE WHEN e.grant_type = 'SUBSCRIPTION'
                                          THEN 'ALLOCATION_GRANTED' ELSE 'GRANTED' END
                   WHEN 'USAGE' THEN 'COMMITTED'
                   WHEN 'EXPIRY' THEN 'CREDITS_EXPIRED'
                   WHEN 'REFUND' THEN 'REFUNDED'
                   WHEN 'TRANSFER_IN' THEN 'TRANSFERRED'
                   WHEN 'TRANSFER_OUT' THEN 'TRANSFERRED'
                   ELSE 'ADJUSTED' END,
               e.account_id,
               jsonb_strip_nulls(jsonb_build_object(
                   'entry_id', e.entry_id, 'entry_type', e.entry_type,
                   'grant_type', e.grant_type, 'amount', e.amount,
                   'balance_after', e.balance_after, 'reservation_id', e.reservation_id,
                   'lot_id', e.lot_id, 'transfer_id', e.transfer_id, 'feature', e.feature,
                   'units', e.units))
          FROM new_entries e ORDER BY e.entry_id;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER tg_ledger_entries_events AFTER INSERT ON ledger_entries
        REFERENCING NEW TABLE AS new_entries
        FOR EACH STATEMENT EXECUTE FUNCTION credits_entry_events()""",
    f"""
    CREATE FUNCTION credits_hold_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            {_INSERT}
            SELECT 'RESERVED', r.account_id, jsonb_strip_nulls(jsonb_build_object(
                       'reservation_id', r.reservation_id, 'amount', r.amount,
                       'expire_time', r.expire_time, 'member_account_id', r.member_account_id))
              FROM new_holds r;
        ELSE
            {_INSERT}
            SELECT CASE n.status WHEN 'RELEASED' THEN 'RELEASED' ELSE 'RESERVATION_EXPIRED' END,
                   n.account_id, jsonb_strip_nulls(jsonb_build_object(
                       'reservation_id', n.reservation_id, 'amount', n.amount,
                       'release_reason', nullif(n.release_reason, ''),
                       'member_account_id', n.member_account_id))
              FROM new_holds n JOIN old_holds o USING (reservation_id)
             WHERE o.status = 'ACTIVE' AND n.status IN ('RELEASED', 'EXPIRED');
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER tg_reservations_placed_events AFTER INSERT ON reservations
        REFERENCING NEW TABLE AS new_holds
        FOR EACH STATEMENT EXECUTE FUNCTION credits_hold_events()""",
    """CREATE TRIGGER tg_reservations_ended_events AFTER UPDATE ON reservations
        REFERENCING OLD TABLE AS old_holds NEW TABLE AS new_holds
        FOR EACH STATEMENT EXECUTE FUNCTION credits_hold_events()""",
    f"""
    CREATE FUNCTION credits_account_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_TABLE_NAME = 'accounts' THEN
            {_INSERT}
            SELECT 'ACCOUNT_CREATED', a.account_id, jsonb_build_object('plan', a.plan)
              FROM new_rows a ORDER BY a.account_id;
        ELSE
            {_INSERT}
            SELECT CASE WHEN c.kind = 'PLAN' THEN 'PLAN_CHANGED'
                        WHEN c.new_value = 'FROZEN' THEN 'ACCOUNT_FROZEN'
                        WHEN c.new_value = 'CLOSED' THEN 'ACCOUNT_CLOSED'
                        ELSE 'ACCOUNT_ACTIVATED' END,
                   c.account_id, jsonb_build_object('from', c.old_value, 'to', c.new_value,
                                                    'reason', c.reason, 'actor', c.actor)
              FROM new_rows c ORDER BY c.change_id;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER tg_accounts_events AFTER INSERT ON accounts
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION credits_account_events()""",
    """CREATE TRIGGER tg_account_changes_events AFTER INSERT ON account_changes
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION credits_account_events()""",
]

DOWNGRADE = [
    "DROP TRIGGER tg_account_changes_events ON account_changes",
    "DROP TRIGGER tg_accounts_events ON accounts",
    "DROP TRIGGER tg_reservations_ended_events ON reservations",
    "DROP TRIGGER tg_reservations_placed_events ON reservations",
    "DROP TRIGGER tg_ledger_entries_events ON ledger_entries",
    "DROP FUNCTION credits_account_events()",
    "DROP FUNCTION credits_hold_events()",
    "DROP FUNCTION credits_entry_events()",
    "DROP TABLE events",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
