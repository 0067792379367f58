"""The schema, declared as SQLAlchemy metadata: what the migrations build, in one place.

Migrations stay hand-written SQL (migrations/versions/); this metadata is Alembic's target, so
`alembic revision --autogenerate` drafts the next one, and a test compares it with a database
migrated to head (tests/integration/test_migrations.py), so the two cannot drift in tables,
columns, types, defaults, indexes or keys. Statements do not use it (they are asyncpg's $n
SQL); constraint names are fixed by the migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

_NOW = text("credits_now()")


def _time(name: str, *, nullable: bool = False, default: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable,
                  server_default=_NOW if default else None)


def _credits(name: str, *, nullable: bool = False, default: bool = False) -> Column[object]:
    return Column(name, BigInteger, nullable=nullable,
                  server_default=text("0") if default else None)


accounts = Table(
    "accounts", metadata,
    Column("account_id", Text, primary_key=True),
    _credits("balance", default=True),
    _credits("reserved", default=True),
    _credits("active_reservation_count", default=True),
    _credits("lifetime_granted", default=True),
    _credits("lifetime_used", default=True),
    _time("create_time", default=True),
    _time("update_time", default=True),
    _credits("lifetime_expired", default=True),
    Column("plan", Text, nullable=False, server_default=text("'default'::text")),
    Column("status", Text, nullable=False, server_default=text("'ACTIVE'::text")),
    _credits("credit_limit", default=True),
    _credits("debt", default=True),
    # A member of an organisation: its pool (migration 0014)
    Column("pool_account_id", Text, nullable=True),
    # Balance alerts (0018): the low-balance rule (the plan's unless alert_custom), the
    # amount of the last GRANT, and where its own available credits stood last
    Column("low_balance_credits", BigInteger, nullable=True),
    Column("low_balance_percent", SmallInteger, nullable=True),
    Column("alert_custom", Boolean, nullable=False, server_default=text("false")),
    Column("last_top_up", BigInteger, nullable=False, server_default=text("0")),
    Column("alert_state", SmallInteger, nullable=True),
    CheckConstraint("low_balance_credits BETWEEN 1 AND 1000000000000",
                    name="ck_accounts_low_balance_credits"),
    CheckConstraint("low_balance_percent BETWEEN 1 AND 100",
                    name="ck_accounts_low_balance_percent"),
    CheckConstraint("char_length(account_id) BETWEEN 1 AND 128",
                    name="ck_accounts_account_id_length"),
    CheckConstraint("reserved >= 0", name="ck_accounts_reserved_nonnegative"),
    CheckConstraint("balance >= -1000000000000000", name="ck_accounts_balance_min"),
    CheckConstraint("credit_limit BETWEEN 0 AND 1000000000000000",
                    name="ck_accounts_credit_limit"),
    CheckConstraint("debt BETWEEN 0 AND 2000000000000000", name="ck_accounts_debt"),
    CheckConstraint("balance <= 1000000000000000", name="ck_accounts_balance_max"),
    CheckConstraint("active_reservation_count >= 0",
                    name="ck_accounts_active_reservation_count_nonnegative"),
    CheckConstraint("lifetime_granted >= 0 AND lifetime_used >= 0",
                    name="ck_accounts_lifetime_nonnegative"),
    CheckConstraint("lifetime_expired >= 0", name="ck_accounts_lifetime_expired_nonnegative"),
    CheckConstraint("char_length(plan) BETWEEN 1 AND 64", name="ck_accounts_plan_length"),
    CheckConstraint("status IN ('ACTIVE', 'FROZEN', 'CLOSED')", name="ck_accounts_status"),
)

account_changes = Table(
    "account_changes", metadata,
    Column("change_id", BigInteger, Identity(always=True), primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("old_value", Text, nullable=False),
    Column("new_value", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", Text, nullable=False),
    _time("create_time", default=True),
    CheckConstraint("kind IN ('STATUS', 'PLAN')", name="ck_account_changes_kind"),
    CheckConstraint("char_length(reason) BETWEEN 1 AND 256", name="ck_account_changes_reason"),
    Index("ix_account_changes_account_id_change_id", "account_id", "change_id"),
)

reservations = Table(
    "reservations", metadata,
    Column("reservation_id", UUID, primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    _credits("amount"),
    Column("status", Text, nullable=False),
    _credits("committed_amount", nullable=True),
    _time("create_time", default=True),
    _time("expire_time"),
    _time("finish_time", nullable=True),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("release_reason", Text, nullable=False, server_default=text("''::text")),
    Column("actor", Text, nullable=False),
    _credits("refunded_amount", default=True),
    _credits("debt_amount", default=True),
    # A hold of a feature: the price it was placed at (NULL: a hold of an amount)
    Column("price", JSONB, nullable=True),
    # A hold on an organisation's pool: the member who placed it
    Column("member_account_id", Text, nullable=True),
    CheckConstraint("amount > 0", name="ck_reservations_amount_positive"),
    CheckConstraint("status IN ('ACTIVE', 'COMMITTED', 'RELEASED', 'EXPIRED')",
                    name="ck_reservations_status"),
    CheckConstraint("(status = 'COMMITTED') = (committed_amount IS NOT NULL) "
                    "AND committed_amount > 0", name="ck_reservations_committed_amount"),
    CheckConstraint("(status = 'ACTIVE') = (finish_time IS NULL)",
                    name="ck_reservations_finish_time"),
    CheckConstraint("expire_time > create_time", name="ck_reservations_expire_after_create"),
    CheckConstraint("refunded_amount >= 0 AND refunded_amount <= coalesce(committed_amount, 0)",
                    name="ck_reservations_refunded_amount"),
    CheckConstraint("debt_amount >= 0 AND debt_amount <= coalesce(committed_amount, 0)",
                    name="ck_reservations_debt_amount"),
    # The sweeper's work list: only ACTIVE reservations, by expiry.
    Index("ix_reservations_active_expire_time", "expire_time",
          postgresql_where=text("status = 'ACTIVE'")),
    # ListReservations pages an account's reservations newest first.
    Index("ix_reservations_account_id_create_time_id", "account_id",
          text("create_time DESC"), text("reservation_id DESC")),
)

credit_lots = Table(
    "credit_lots", metadata,
    Column("lot_id", BigInteger, Identity(always=True), primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("grant_type", Text, nullable=True),
    Column("priority", Integer, nullable=False),
    _time("expire_time", nullable=True),
    _credits("amount"),
    _credits("remaining"),
    _credits("held", default=True),
    _time("create_time", default=True),
    _time("expired_time", nullable=True),
    _credits("repaid", default=True),
    # Its CREDITS_EXPIRING event was written (0018)
    Column("expiry_warned", Boolean, nullable=False, server_default=text("false")),
    CheckConstraint("repaid BETWEEN 0 AND amount", name="ck_credit_lots_repaid"),
    CheckConstraint("amount > 0 AND held >= 0 AND remaining >= held AND remaining <= amount",
                    name="ck_credit_lots_amounts"),
    CheckConstraint("priority BETWEEN 0 AND 100", name="ck_credit_lots_priority"),
    CheckConstraint("expired_time IS NULL OR (expire_time IS NOT NULL AND remaining = held)",
                    name="ck_credit_lots_expired"),
    # Consumption order among the lots that still hold credits.
    Index("ix_credit_lots_consumption", "account_id", "priority", "expire_time", "lot_id",
          postgresql_where=text("remaining > 0")),
    # The sweeper's work list, and each account's due lots.
    Index("ix_credit_lots_due", "expire_time",
          postgresql_where=text("expired_time IS NULL AND expire_time IS NOT NULL")),
    Index("ix_credit_lots_account_due", "account_id", "expire_time",
          postgresql_where=text("expired_time IS NULL AND expire_time IS NOT NULL")),
    # The lots whose CREDITS_EXPIRING event is still to come (0018)
    Index("ix_credit_lots_expiring", "expire_time",
          postgresql_where=text("expire_time IS NOT NULL AND expired_time IS NULL "
                                "AND NOT expiry_warned")),
)

reservation_lots = Table(
    "reservation_lots", metadata,
    Column("reservation_id", UUID, ForeignKey("reservations.reservation_id"), nullable=False),
    Column("lot_id", BigInteger, ForeignKey("credit_lots.lot_id"), nullable=False),
    _credits("held"),
    _credits("consumed", nullable=True),
    PrimaryKeyConstraint("reservation_id", "lot_id", name="pk_reservation_lots"),
    CheckConstraint("held >= 0 AND coalesce(consumed, 0) >= 0 AND (held > 0 OR consumed > 0)",
                    name="ck_reservation_lots_amounts"),
)

ledger_entries = Table(
    "ledger_entries", metadata,
    Column("entry_id", BigInteger, Identity(always=True), primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("entry_type", Text, nullable=False),
    Column("grant_type", Text, nullable=True),
    _credits("amount"),
    _credits("balance_after"),
    Column("reservation_id", UUID, ForeignKey("reservations.reservation_id"), nullable=True),
    Column("reason", Text, nullable=False, server_default=text("''::text")),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("actor", Text, nullable=False),
    _time("create_time", default=True),
    Column("lot_id", BigInteger, ForeignKey("credit_lots.lot_id"), nullable=True),
    Column("transfer_id", UUID, nullable=True),
    Column("feature", Text, nullable=True),
    Column("units", BigInteger, nullable=True),
    Column("rate_card_version", Text, nullable=True),
    CheckConstraint(
        "feature IS NULL OR (entry_type = 'USAGE' AND char_length(feature) BETWEEN 1 AND 64 "
        "AND units BETWEEN 0 AND 1000000000000000 AND rate_card_version IS NOT NULL)",
        name="ck_ledger_entries_feature"),
    CheckConstraint(
        "(entry_type = 'GRANT' AND amount > 0 AND grant_type IS NOT NULL) "
        "OR (entry_type = 'USAGE' AND amount < 0 AND reservation_id IS NOT NULL) "
        "OR (entry_type = 'EXPIRY' AND amount < 0 AND lot_id IS NOT NULL) "
        "OR (entry_type = 'TRANSFER_OUT' AND amount < 0 AND lot_id IS NOT NULL "
        "AND transfer_id IS NOT NULL) "
        "OR (entry_type = 'TRANSFER_IN' AND amount > 0 AND lot_id IS NOT NULL "
        "AND transfer_id IS NOT NULL) "
        "OR (entry_type = 'REFUND' AND amount > 0 AND reservation_id IS NOT NULL "
        "AND lot_id IS NOT NULL) "
        "OR (entry_type = 'ADJUSTMENT' AND amount <> 0)",
        name="ck_ledger_entries_kind"),
    CheckConstraint("balance_after >= -1000000000000000",
                    name="ck_ledger_entries_balance_after_min"),
    # History pages by (account_id, entry_id).
    Index("ix_ledger_entries_account_id_entry_id", "account_id", "entry_id"),
    # One USAGE entry per reservation, one GRANT entry per lot, a lot written off once on its
    # own and once per reservation giving credits back to it after it expired.
    Index("uq_ledger_entries_usage_reservation_id", "reservation_id", unique=True,
          postgresql_where=text("entry_type = 'USAGE'")),
    Index("uq_ledger_entries_grant_lot_id", "lot_id", unique=True,
          postgresql_where=text("entry_type = 'GRANT'")),
    Index("uq_ledger_entries_expiry_lot_id", "lot_id", unique=True,
          postgresql_where=text("entry_type = 'EXPIRY' AND reservation_id IS NULL")),
    Index("ix_ledger_entries_refund_reservation_id", "reservation_id",
          postgresql_where=text("entry_type = 'REFUND'")),
    Index("ix_ledger_entries_transfer_id", "transfer_id",
          postgresql_where=text("transfer_id IS NOT NULL")),
    Index("uq_ledger_entries_expiry_lot_id_reservation_id", "lot_id", "reservation_id",
          unique=True,
          postgresql_where=text("entry_type = 'EXPIRY' AND reservation_id IS NOT NULL")),
)

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("scope", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("request_hash", LargeBinary, nullable=False),
    Column("response", Text, nullable=True),
    _time("create_time", default=True),
    PrimaryKeyConstraint("scope", "idempotency_key", name="pk_idempotency_keys"),
    Index("ix_idempotency_keys_create_time", "create_time"),
)

account_totals = Table(
    "account_totals", metadata,
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("kind", Text, nullable=False),
    _credits("credits"),
    PrimaryKeyConstraint("account_id", "kind", name="pk_account_totals"),
    CheckConstraint("credits >= 0", name="ck_account_totals_credits"),
)

imported_rows = Table(
    "imported_rows", metadata,
    Column("import_key", Text, primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    _time("create_time", default=True),
    CheckConstraint("char_length(import_key) BETWEEN 1 AND 200",
                    name="ck_imported_rows_import_key_length"),
)

service_keys = Table(
    "service_keys", metadata,
    Column("name", Text, primary_key=True),
    Column("key", LargeBinary, nullable=False),
    _time("create_time", default=True),
    CheckConstraint("length(key) >= 32", name="ck_service_keys_key_length"),
)


def _usage(name: str, keys: tuple[Column[object], ...]) -> Table:
    """A rollup of USAGE entries (migration 0012): credits, units and calls per key."""
    return Table(
        name, metadata, *keys,
        _credits("credits"),
        Column("units", Numeric, nullable=False),
        _credits("calls"),
        PrimaryKeyConstraint(*(key.name for key in keys), name=f"pk_{name}"),
    )


usage_hours = _usage("usage_hours", (
    Column("account_id", Text, nullable=False), _time("hour"),
    Column("feature", Text, nullable=False)))
Index("ix_usage_hours_hour", usage_hours.c.hour)
usage_days = _usage("usage_days", (
    Column("day", Date, nullable=False), Column("account_id", Text, nullable=False),
    Column("feature", Text, nullable=False)))
usage_months = _usage("usage_months", (
    Column("month", Date, nullable=False), Column("account_id", Text, nullable=False),
    Column("feature", Text, nullable=False)))
usage_shards = _usage("usage_shards", (
    _time("hour"), Column("plan", Text, nullable=False), Column("feature", Text, nullable=False),
    Column("shard", SmallInteger, nullable=False)))
# The shards the sweeper has not folded yet (shard -1 is the fold)
Index("ix_usage_shards_uncompacted", usage_shards.c.hour,
      postgresql_where=text("shard >= 0"))

subscriptions = Table(
    "subscriptions", metadata,
    Column("subscription_id", BigInteger, Identity(always=True), primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("plan", Text, nullable=False),
    Column("allocation", JSONB, nullable=False),
    _time("anchor"),
    Column("status", Text, nullable=False, server_default=text("'ACTIVE'::text")),
    Column("last_period", Integer, nullable=False),
    _time("next_grant_time", nullable=True),
    Column("next_plan", Text, nullable=True),
    Column("next_allocation", JSONB, nullable=True),
    _time("cancel_time", nullable=True),
    _time("create_time", default=True),
    _time("update_time", default=True),
    CheckConstraint("status IN ('ACTIVE', 'CANCELED')", name="ck_subscriptions_status"),
    Index("uq_subscriptions_active_account_id", "account_id", unique=True,
          postgresql_where=text("status = 'ACTIVE'")),
    Index("ix_subscriptions_due", "next_grant_time", postgresql_where=text("status = 'ACTIVE'")),
    Index("ix_subscriptions_account_id", "account_id", "subscription_id"),
)

subscription_grants = Table(
    "subscription_grants", metadata,
    Column("grant_id", BigInteger, Identity(always=True), primary_key=True),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.subscription_id"),
           nullable=False),
    Column("period", Integer, nullable=False),
    Column("kind", Text, nullable=False),
    Column("plan", Text, nullable=False),
    _credits("credits"),
    _credits("carried", default=True),
    Column("lot_id", BigInteger, ForeignKey("credit_lots.lot_id"), nullable=True),
    # the rollover rule of the plan it was granted under (migration 0015)
    Column("rollover", Text, nullable=False),
    _credits("rollover_cap"),
    _time("grant_time", default=True),
    CheckConstraint("kind IN ('PERIOD', 'UPGRADE')", name="ck_subscription_grants_kind"),
    Index("uq_subscription_grants_period", "subscription_id", "period", unique=True,
          postgresql_where=text("kind = 'PERIOD'")),
    Index("ix_subscription_grants_subscription_id_period", "subscription_id", "period"),
)

organizations = Table(
    "organizations", metadata,
    Column("organization_id", Text, primary_key=True),
    Column("pool_account_id", Text, ForeignKey("accounts.account_id"), nullable=False,
           unique=True),
    _time("create_time", default=True),
)

organization_members = Table(
    "organization_members", metadata,
    Column("account_id", Text, ForeignKey("accounts.account_id"), primary_key=True),
    Column("organization_id", Text, ForeignKey("organizations.organization_id"),
           nullable=False),
    _credits("period_cap", nullable=True),
    _credits("total_cap", nullable=True),
    _credits("held", default=True),
    Column("period_start", Date, nullable=False,
           server_default=text("(date_trunc('month'::text, (credits_now() AT TIME ZONE "
                               "'UTC'::text)))::date")),
    _credits("period_used", default=True),
    _credits("total_used", default=True),
    _time("create_time", default=True),
    _time("update_time", default=True),
    Index("ix_organization_members_organization_id", "organization_id", "account_id"),
)

usage_members = Table(
    "usage_members", metadata,
    _time("hour"),
    Column("pool_account_id", Text, nullable=False),
    Column("member_account_id", Text, nullable=False),
    Column("feature", Text, nullable=False),
    _credits("credits"),
    _credits("calls"),
    PrimaryKeyConstraint("pool_account_id", "hour", "member_account_id", "feature",
                         name="pk_usage_members"),
)

events = Table(
    "events", metadata,
    Column("event_id", BigInteger, Identity(always=True), primary_key=True),
    # the writing transaction's id (pg_current_xact_id): positions are (xid, event_id)
    Column("xid", BigInteger, nullable=False,
           server_default=text("(pg_current_xact_id())::text::bigint")),
    Column("event_type", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    _time("create_time", default=True),
    Index("ix_events_position", "xid", "event_id"),
)

# Each plan's low-balance rule, from the plans file at start-up (0018)
plan_alerts = Table(
    "plan_alerts", metadata,
    Column("plan", Text, primary_key=True),
    Column("low_balance_credits", BigInteger, nullable=True),
    Column("low_balance_percent", SmallInteger, nullable=True),
    CheckConstraint("low_balance_credits BETWEEN 1 AND 1000000000000",
                    name="ck_plan_alerts_credits"),
    CheckConstraint("low_balance_percent BETWEEN 1 AND 100", name="ck_plan_alerts_percent"),
    CheckConstraint("num_nonnulls(low_balance_credits, low_balance_percent) = 1",
                    name="ck_plan_alerts_one_rule"),
)

# One row: the position of the last event the retention purge deleted (0017)
events_purged = Table(
    "events_purged", metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("xid", BigInteger, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    CheckConstraint("singleton", name="events_purged_singleton_check"),
)


# Webhooks (0019): each endpoint's position and lease, and the events it did not take
webhook_endpoints = Table(
    "webhook_endpoints", metadata,
    Column("name", Text, primary_key=True),
    Column("xid", BigInteger, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("lease_owner", Text, nullable=False, server_default=text("''::text")),
    Column("lease_until", DateTime(timezone=True), nullable=False,
           server_default=text("'-infinity'::timestamp with time zone")),
    _time("update_time", default=True),
)

webhook_dead_letters = Table(
    "webhook_dead_letters", metadata,
    Column("dead_letter_id", BigInteger, Identity(always=True), primary_key=True),
    Column("endpoint", Text, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'DEAD'::text")),
    _time("create_time", default=True),
    _time("update_time", default=True),
    CheckConstraint("status IN ('DEAD', 'REDELIVERED')", name="ck_webhook_dead_letters_status"),
    Index("ix_webhook_dead_letters_endpoint", "endpoint", "dead_letter_id"),
)
