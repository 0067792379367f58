"""CreditsClient's calls of the product around the ledger: the rate card, usage
summaries, subscriptions, organisations and webhook dead letters. A mixin of CreditsClient,
which gives `call` (retries with the same request, typed errors)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from credits.v1 import credits_pb2 as pb
from credits_client import _mapping, types


class ProductCalls:
    async def call(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        raise NotImplementedError

    # --- the rate card and usage --------------------------------------------------------

    async def get_rate_card(
        self, *, plan: str = "", account_id: str = "", timeout_s: float | None = None
    ) -> types.RateCard:
        """The rate card in force: a plan's prices, an account's plan's, or (neither) every
        feature's own with the plans that pay otherwise."""
        return _mapping.rate_card(await self.call("GetRateCard", pb.GetRateCardRequest(
            plan=plan, account_id=account_id), timeout_s))

    async def reload_rate_card(self, *, timeout_s: float | None = None
                               ) -> types.RateCardReload:
        """Read the rate card file again (admin only); a broken file raises RateCardRefused
        and the card in force stays."""
        answer = await self.call("ReloadRateCard", pb.ReloadRateCardRequest(), timeout_s)
        return types.RateCardReload(answer.version, answer.previous_version, answer.file,
                                    answer.feature_count)

    async def usage_summary(
        self, *, account_ids: Sequence[str] = (), plan: str = "",
        start_time: datetime | None = None, end_time: datetime | None = None,
        bucket_size: str = "DAY", features: Sequence[str] = (),
        top_accounts: int | None = None, by_member: bool = False,
        timeout_s: float | None = None,
    ) -> types.UsageSummary:
        """Usage added up by bucket (HOUR, DAY, MONTH) and feature over [start_time,
        end_time), whole UTC hours (default: this month so far), of `account_ids`, of a
        plan's accounts, or of all (docs/api.md, UsageSummary)."""
        request = pb.UsageSummaryRequest(
            account_ids=list(account_ids), plan=plan, features=list(features),
            bucket_size=pb.UsageBucketSize.Value(f"USAGE_BUCKET_SIZE_{bucket_size}"),
            by_member=by_member)
        if start_time is not None:
            request.start_time.CopyFrom(_mapping.stamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(_mapping.stamp(end_time))
        if top_accounts is not None:
            request.top_accounts = top_accounts
        return _mapping.usage_summary(await self.call("UsageSummary", request, timeout_s))

    # --- subscriptions ------------------------------------------------------------------

    async def subscribe(
        self, account_id: str, plan: str, *, idempotency_key: str | None = None,
        reason: str = "", timeout_s: float | None = None,
    ) -> types.SubscriptionResult:
        """Subscribe the account (created on the plan if missing) to the plan's allocation;
        its first period is granted now."""
        return _mapping.subscription_result(await self.call("Subscribe", pb.SubscribeRequest(
            account_id=account_id, plan=plan, reason=reason,
            idempotency_key=idempotency_key or str(uuid.uuid4())), timeout_s))

    async def change_subscription(
        self, account_id: str, plan: str, *, idempotency_key: str | None = None,
        reason: str = "", timeout_s: float | None = None,
    ) -> types.SubscriptionResult:
        """Move the subscription to another plan of the same period: an upgrade now, with
        a prorated grant; a downgrade at the next period (`next_plan`)."""
        return _mapping.subscription_result(await self.call(
            "ChangeSubscription", pb.ChangeSubscriptionRequest(
                account_id=account_id, plan=plan, reason=reason,
                idempotency_key=idempotency_key or str(uuid.uuid4())), timeout_s))

    async def cancel_subscription(
        self, account_id: str, *, immediately: bool = False,
        idempotency_key: str | None = None, reason: str = "",
        timeout_s: float | None = None,
    ) -> types.SubscriptionResult:
        """End the subscription when its period ends, or `immediately`."""
        return _mapping.subscription_result(await self.call(
            "CancelSubscription", pb.CancelSubscriptionRequest(
                account_id=account_id, immediately=immediately, reason=reason,
                idempotency_key=idempotency_key or str(uuid.uuid4())), timeout_s))

    async def get_subscription(
        self, account_id: str, *, timeout_s: float | None = None
    ) -> types.SubscriptionState:
        """The account's active subscription (or its last one canceled) and its period."""
        answer = await self.call("GetSubscription", pb.GetSubscriptionRequest(
            account_id=account_id), timeout_s)
        return types.SubscriptionState(
            _mapping.subscription(answer.subscription),
            _mapping.time_of(answer.period_start_time),
            _mapping.time_of(answer.period_end_time), answer.period_granted_credits)

    # --- organisations ------------------------------------------------------------------

    async def create_organization(
        self, organization_id: str, *, pool_account_id: str = "", plan: str = "",
        timeout_s: float | None = None,
    ) -> types.OrganizationResult:
        """The organisation, created first (with its pool account, `organization_id` unless
        given, on `plan`) if missing."""
        answer = await self.call("CreateOrganization", pb.CreateOrganizationRequest(
            organization_id=organization_id, pool_account_id=pool_account_id, plan=plan),
            timeout_s)
        return types.OrganizationResult(_mapping.organization(answer.organization),
                                        answer.created)

    async def add_member(
        self, organization_id: str, account_id: str, *, period_cap: int | None = None,
        total_cap: int | None = None, timeout_s: float | None = None,
    ) -> types.MemberChange:
        """Let the account draw on the organisation's pool, within a monthly cap and a
        total cap (None: no cap)."""
        answer = await self.call("AddMember", pb.AddMemberRequest(
            organization_id=organization_id, account_id=account_id, period_cap=period_cap,
            total_cap=total_cap), timeout_s)
        return types.MemberChange(_mapping.member(answer.member), answer.changed)

    async def set_member_caps(
        self, organization_id: str, account_id: str, *, period_cap: int | None = None,
        total_cap: int | None = None, timeout_s: float | None = None,
    ) -> types.MemberChange:
        """Set a member's caps (None: no cap)."""
        answer = await self.call("SetMemberCaps", pb.SetMemberCapsRequest(
            organization_id=organization_id, account_id=account_id, period_cap=period_cap,
            total_cap=total_cap), timeout_s)
        return types.MemberChange(_mapping.member(answer.member), answer.changed)

    async def remove_member(
        self, organization_id: str, account_id: str, *, timeout_s: float | None = None
    ) -> types.Member:
        """Remove a member whose holds on the pool have ended; the member as it was. A retry
        after a lost reply raises MemberNotFound: the member is gone either way."""
        answer = await self.call("RemoveMember", pb.RemoveMemberRequest(
            organization_id=organization_id, account_id=account_id), timeout_s)
        return _mapping.member(answer.member)

    async def get_organization(
        self, organization_id: str, *, page_size: int = 100, page_token: str = "",
        timeout_s: float | None = None,
    ) -> types.OrganizationPage:
        """The organisation, its pool's balance and a page of its members."""
        answer = await self.call("GetOrganization", pb.GetOrganizationRequest(
            organization_id=organization_id, page_size=page_size, page_token=page_token),
            timeout_s)
        return types.OrganizationPage(
            _mapping.organization(answer.organization), _mapping.balance(answer.pool_balance),
            tuple(_mapping.member(m) for m in answer.members), answer.next_page_token)

    # --- webhook dead letters -----------------------------------------------------------

    async def list_dead_letters(
        self, *, endpoint: str = "", include_redelivered: bool = False, page_size: int = 50,
        page_token: str = "", timeout_s: float | None = None,
    ) -> types.DeadLetterPage:
        """Events a webhook endpoint did not take (admin only; docs/webhooks.md)."""
        answer = await self.call("ListDeadLetters", pb.ListDeadLettersRequest(
            endpoint=endpoint, include_redelivered=include_redelivered,
            page_size=page_size, page_token=page_token), timeout_s)
        return types.DeadLetterPage(
            tuple(_mapping.dead_letter(d) for d in answer.dead_letters),
            answer.next_page_token)

    async def redeliver_dead_letter(
        self, dead_letter_id: str, *, timeout_s: float | None = None
    ) -> types.DeadLetter:
        """Deliver a dead letter again, now (admin only); one redelivered already is
        returned as it is."""
        answer = await self.call("RedeliverDeadLetter", pb.RedeliverDeadLetterRequest(
            dead_letter_id=dead_letter_id), timeout_s)
        return _mapping.dead_letter(answer.dead_letter)
