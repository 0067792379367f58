"""The client library's calls of the product around the ledger (issue 31), against the real
server: the rate card, usage summaries, subscriptions, organisations, account details and
webhook dead letters answer typed dataclasses, and their failures typed errors; the sync
client streams events as a blocking iterator."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from credits_client import (
    AlreadySubscribed,
    CreditsClient,
    DeadLetterNotFound,
    MemberCapExceeded,
    MemberHasHolds,
    MemberNotFound,
    OrganizationNotFound,
    PlanWithoutAllocation,
    SubscriptionNotFound,
    SubscriptionPeriodMismatch,
    SyncCreditsClient,
    UnknownFeature,
    WebhookDeliveryFailed,
)
from tests.support.serving import EXAMPLE_PLANS, serving_app

EXAMPLE_CARD = Path(__file__).resolve().parents[2] / "docs" / "rates.example.toml"


@pytest.fixture
async def client(test_settings: Any) -> Any:
    async with serving_app(test_settings, plans_file=str(EXAMPLE_PLANS),
                           rate_card_file=str(EXAMPLE_CARD), scheduler_interval_s=3600,
                           shutdown_grace_s=1) as (app, _):
        async with CreditsClient(f"127.0.0.1:{app.port}") as connected:
            yield connected


async def test_the_rate_card_and_its_reload_are_typed(client):
    card = await client.get_rate_card()
    names = [f.feature for f in card.features]
    assert names == sorted(names) and "llm" in names and card.plan == ""
    llm = next(f for f in card.features if f.feature == "llm")
    assert llm.price.rounding in ("UP", "DOWN", "NEAREST") and "pro" in llm.plan_prices
    pro = await client.get_rate_card(plan="pro")
    assert pro.plan == "pro" and pro.version == card.version
    assert next(f for f in pro.features if f.feature == "llm").price == llm.plan_prices["pro"]
    reloaded = await client.reload_rate_card()
    assert (reloaded.version, reloaded.previous_version, reloaded.feature_count) == (
        card.version, card.version, len(card.features))
    with pytest.raises(UnknownFeature) as unknown:
        await client.quote("nobody", "no-such-feature", 1)
    assert "llm" in unknown.value.metadata["knownFeatures"]


async def test_subscriptions_are_typed_from_subscribe_to_cancel(client):
    subscribed = await client.subscribe("sub-1", "starter", reason="signed up")
    subscription = subscribed.subscription
    assert (subscription.plan, subscription.status, subscription.last_period) == (
        "starter", "ACTIVE", 0)
    allocation = subscription.allocation
    assert (allocation.credits, allocation.period, allocation.rollover,
            allocation.rollover_cap) == (1000, "MONTH", "CAPPED", 500)
    assert subscribed.changed and subscribed.balance.balance >= 1000
    assert subscribed.entries[-1].entry_type == "GRANT"
    assert subscription.next_grant_time > subscription.start_time
    state = await client.get_subscription("sub-1")
    assert state.subscription.subscription_id == subscription.subscription_id
    assert state.period_granted_credits == 1000 and state.period_end_time is not None
    with pytest.raises(AlreadySubscribed):
        await client.subscribe("sub-1", "scale")
    with pytest.raises(SubscriptionPeriodMismatch):
        await client.change_subscription("sub-1", "weekly")
    with pytest.raises(PlanWithoutAllocation):
        await client.subscribe("sub-2", "free")
    upgraded = await client.change_subscription("sub-1", "growth", idempotency_key="up-1")
    assert upgraded.changed and upgraded.subscription.plan == "growth"
    again = await client.change_subscription("sub-1", "growth", idempotency_key="up-1")
    assert again == upgraded  # the same key: the first answer, nothing granted twice
    canceled = await client.cancel_subscription("sub-1")
    assert canceled.changed and canceled.subscription.cancel_time is not None
    assert not (await client.cancel_subscription("sub-1")).changed
    ended = await client.cancel_subscription("sub-1", immediately=True)
    assert ended.subscription.status == "CANCELED"
    with pytest.raises(SubscriptionNotFound):
        await client.cancel_subscription("sub-1")


async def test_organisations_members_and_usage_are_typed(client):
    created = await client.create_organization("org-1", pool_account_id="org-1-pool",
                                               plan="team")
    assert created.created and created.organization.pool_account_id == "org-1-pool"
    assert not (await client.create_organization(
        "org-1", pool_account_id="org-1-pool")).created
    await client.grant("org-1-pool", 500, idempotency_key="org-1-topup")
    await client.ensure_account("ann", plan="team")  # no credits of its own: draws the pool
    added = await client.add_member("org-1", "ann", period_cap=100)
    member = added.member
    assert added.changed and (member.period_cap, member.total_cap, member.remaining) == (
        100, None, 100)
    with pytest.raises(MemberCapExceeded):
        await client.reserve("ann", amount=150)
    async with client.hold("ann", feature="llm", units=2000) as hold:
        assert hold.reservation.account_id == "org-1-pool"
        assert hold.reservation.member_account_id == "ann"
    spent = hold.result.reservation.committed_amount
    assert spent > 0 and hold.result.reservation.cost == spent
    assert hold.result.reservation.draws and hold.result.reservation.finish_time
    page = await client.get_organization("org-1")
    assert page.organization.member_count == 1 and page.pool_balance.balance == 500 - spent
    (listed,) = page.members
    assert (listed.account_id, listed.period_used, listed.remaining) == ("ann", spent,
                                                                         100 - spent)
    details = await client.account_details("ann")
    assert details.member.organization_id == "org-1"
    assert details.pool_balance.balance == 500 - spent and details.account.plan
    pool = await client.account_details("org-1-pool", expiring_within_s=3600)
    assert pool.totals["purchased"] == 500 and pool.granted_by_type == {"PURCHASE": 500}
    assert pool.lots[0].grant_type == "PURCHASE" and pool.lots[0].remaining == 500 - spent
    summary = await client.usage_summary(account_ids=["org-1-pool"], by_member=True,
                                         bucket_size="HOUR")
    assert summary.bucket_size == "HOUR"
    assert [(f.feature, f.credits, f.calls) for f in summary.features] == [("llm", spent, 1)]
    assert summary.buckets[0].usage.credits == spent and summary.buckets[0].start_time
    assert summary.top_accounts[0].account_id == "org-1-pool"
    assert [(m.member_account_id, m.credits) for m in summary.members] == [("ann", spent)]
    uncapped = await client.set_member_caps("org-1", "ann")
    assert uncapped.changed and uncapped.member.period_cap is None
    held = await client.reserve("ann", amount=10)
    with pytest.raises(MemberHasHolds):
        await client.remove_member("org-1", "ann")
    await client.release(held.reservation.reservation_id)
    removed = await client.remove_member("org-1", "ann")
    assert removed.account_id == "ann"
    with pytest.raises(MemberNotFound):
        await client.remove_member("org-1", "ann")
    with pytest.raises(OrganizationNotFound):
        await client.get_organization("org-none")


async def test_dead_letters_are_listed_and_redelivered_with_typed_errors(
        test_settings, tmp_path):
    hooks = tmp_path / "webhooks.toml"  # an endpoint nothing listens on: every attempt fails
    hooks.write_text('[[endpoints]]\nname = "billing"\nurl = "http://127.0.0.1:9/hook"\n'
                     'secret = "whsec-test-0123456789abcdef"\nevent_types = ["GRANTED"]\n')
    async with serving_app(test_settings, webhooks_file=str(hooks), webhook_timeout_s=0.5,
                           webhook_retry_for_s=0.5, webhook_backoff_initial_s=0.05,
                           webhook_backoff_max_s=0.1, events_poll_interval_s=0.1,
                           shutdown_grace_s=1) as (app, _):
        async with CreditsClient(f"127.0.0.1:{app.port}") as client:
            await asyncio.sleep(0.3)  # the endpoint starts from now
            await client.grant("dl-1", 7)
            deadline = time.monotonic() + 15
            while not (page := await client.list_dead_letters()).dead_letters:
                assert time.monotonic() < deadline, "no dead letter"
                await asyncio.sleep(0.1)
            (letter,) = page.dead_letters
            assert (letter.endpoint, letter.event_type, letter.account_id, letter.status) == (
                "billing", "GRANTED", "dl-1", "DEAD")
            assert letter.attempts >= 1 and letter.last_error
            assert json.loads(letter.body_json)["data"]["amount"] == 7
            with pytest.raises(WebhookDeliveryFailed) as refused:
                await client.redeliver_dead_letter(letter.dead_letter_id)
            assert refused.value.metadata["endpoint"] == "billing"
            with pytest.raises(DeadLetterNotFound):
                await client.redeliver_dead_letter("999999")
            shown = await client.list_dead_letters(endpoint="billing", page_size=1)
            assert shown.dead_letters[0].attempts == letter.attempts + 1


async def test_the_sync_client_streams_events_as_a_blocking_iterator(app):
    def blocking_consumer() -> list[tuple[str, str]]:
        cursors: list[str] = []
        with SyncCreditsClient(f"127.0.0.1:{app.port}") as client:
            client.grant("w-sync", 5)
            seen = []
            for event in client.watch_events(from_oldest=True, account_ids=["w-sync"],
                                             on_cursor=cursors.append):
                seen.append((event.event_type, event.account_id))
                if event.event_type == "GRANTED":
                    break  # leaving the loop ends the stream
            assert cursors and client.get_balance("w-sync").balance == 5
            return seen

    seen = await asyncio.to_thread(blocking_consumer)
    assert seen[-1] == ("GRANTED", "w-sync")
