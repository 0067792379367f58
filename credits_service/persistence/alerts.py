"""Balance alerts' rules and expiring-soon notices (migration 0018; domain/alerts.py): the
plans' rules copied into plan_alerts and onto their accounts, an account's own rule, and the
sweeper's CREDITS_EXPIRING events, one per lot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from credits_service.domain.alerts import BalanceAlert, BalanceLevel, LowBalanceRule
from credits_service.domain.model import CREDIT_LIMIT_UNLIMITED

_DROP_PLANS = "DELETE FROM plan_alerts WHERE plan <> ALL($1::text[])"
_PUT_PLANS = """
    INSERT INTO plan_alerts (plan, low_balance_credits, low_balance_percent)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[])
    ON CONFLICT (plan) DO UPDATE
       SET low_balance_credits = excluded.low_balance_credits,
           low_balance_percent = excluded.low_balance_percent
     WHERE (plan_alerts.low_balance_credits, plan_alerts.low_balance_percent)
           IS DISTINCT FROM (excluded.low_balance_credits, excluded.low_balance_percent)"""
# Accounts following their plan's rule get it as plan_alerts now says: one scan, locking
# in account order as every transaction does.
_SYNC_ACCOUNTS = """
    WITH due AS (
        SELECT a.account_id, p.low_balance_credits, p.low_balance_percent
          FROM accounts a LEFT JOIN plan_alerts p ON p.plan = a.plan
         WHERE NOT a.alert_custom
           AND (a.low_balance_credits, a.low_balance_percent)
               IS DISTINCT FROM (p.low_balance_credits, p.low_balance_percent)
         ORDER BY a.account_id
           FOR UPDATE OF a
    )
    UPDATE accounts a
       SET low_balance_credits = due.low_balance_credits,
           low_balance_percent = due.low_balance_percent, update_time = credits_now()
      FROM due WHERE a.account_id = due.account_id"""
# $2 false: back to the plan's rule (the rule trigger copies it)
_SET_RULE = """
    UPDATE accounts
       SET alert_custom = $2, low_balance_credits = $3, low_balance_percent = $4,
           update_time = credits_now()
     WHERE account_id = $1
    RETURNING account_id, alert_custom, low_balance_credits, low_balance_percent, last_top_up,
              alert_state, credit_limit"""
# Lots expiring within $1 seconds not yet told of: marked, and a CREDITS_EXPIRING event for
# each that still has credits ($2 of them at most; lots another sweeper holds are skipped).
_WARN_EXPIRING = """
    WITH due AS (
        SELECT lot_id FROM credit_lots
         WHERE expire_time IS NOT NULL AND expired_time IS NULL AND NOT expiry_warned
           AND expire_time <= credits_now() + make_interval(secs => $1)
         ORDER BY expire_time LIMIT $2
           FOR UPDATE SKIP LOCKED
    ), warned AS (
        UPDATE credit_lots l SET expiry_warned = true FROM due WHERE l.lot_id = due.lot_id
        RETURNING l.lot_id, l.account_id, l.remaining, l.expire_time, l.grant_type
    ), told AS (
        INSERT INTO events (event_type, account_id, data)
        SELECT 'CREDITS_EXPIRING', w.account_id, jsonb_build_object(
                   'lot_id', w.lot_id, 'remaining', w.remaining, 'expire_time', w.expire_time,
                   'grant_type', w.grant_type)
          FROM warned w WHERE w.remaining > 0 ORDER BY w.lot_id
    )
    SELECT count(*) FROM warned"""

_LEVELS = (BalanceLevel.DEPLETED, BalanceLevel.LOW, BalanceLevel.OK)


class AlertRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def sync_plan_rules(self, rules: Mapping[str, LowBalanceRule]) -> int:
        """Make plan_alerts the plans' rules, and give the accounts that follow their plan's
        rule the rule it has now; returns how many accounts changed."""
        plans = list(rules)
        await self._connection.execute(_DROP_PLANS, plans)
        await self._connection.execute(
            _PUT_PLANS, plans, [r.credits for r in rules.values()],
            [r.percent for r in rules.values()])
        status = await self._connection.execute(_SYNC_ACCOUNTS)
        return int(status.split()[-1])

    async def set_rule(
        self, account_id: str, custom: bool, rule: LowBalanceRule | None
    ) -> BalanceAlert | None:
        """Give the account its own rule (`custom`; None: no alerts), or its plan's again;
        None if there is no such account."""
        row = await self._connection.fetchrow(
            _SET_RULE, account_id, custom, rule.credits if rule else None,
            rule.percent if rule else None)
        if row is None:
            return None
        credits, percent = row["low_balance_credits"], row["low_balance_percent"]
        rule_now = LowBalanceRule(credits, percent) if (credits or percent) else None
        state = row["alert_state"]
        return BalanceAlert(
            account_id=row["account_id"], rule=rule_now, custom=row["alert_custom"],
            threshold=rule_now.threshold(row["last_top_up"]) if rule_now else 0,
            last_top_up=row["last_top_up"],
            level=(None if state is None or row["credit_limit"] >= CREDIT_LIMIT_UNLIMITED
                   else _LEVELS[state]))

    async def warn_expiring(self, within_s: float, limit: int) -> int:
        """Mark up to `limit` lots expiring within `within_s` seconds, writing each one's
        CREDITS_EXPIRING event; returns how many were marked."""
        return int(await self._connection.fetchval(_WARN_EXPIRING, within_s, limit))
