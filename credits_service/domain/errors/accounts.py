"""The errors of accounts, plans, subscriptions and organisations (errors/__init__.py)."""

from __future__ import annotations

from collections.abc import Sequence

from credits_service.domain.errors.base import CreditsError


class AccountNotEmpty(CreditsError):
    """An account is closed only once it has no balance and no active reservations (metadata
    `accountId`, `balance`, `reserved`)."""

    reason = "ACCOUNT_NOT_EMPTY"

    def __init__(self, account_id: str, balance: int, reserved: int) -> None:
        super().__init__(
            f"account {account_id!r} still has a balance of {balance} and {reserved} reserved: "
            "release its reservations and bring its balance to 0 before closing it",
            {"accountId": account_id, "balance": str(balance), "reserved": str(reserved)})


class PlanNotFound(CreditsError):
    """No plan of this name is configured (metadata `plan`); docs/accounts.md."""

    reason = "PLAN_NOT_FOUND"

    def __init__(self, plan: str) -> None:
        super().__init__(f"no plan is called {plan!r}", {"plan": plan})


class PlanWithoutAllocation(CreditsError):
    """A subscription is to a plan with a per-period allocation; this plan has none (metadata
    `plan`, and `plansWithAllocation`: those that have one, comma-separated);
    docs/subscriptions.md."""

    reason = "PLAN_WITHOUT_ALLOCATION"

    def __init__(self, plan: str, allocating: Sequence[str]) -> None:
        super().__init__(
            f"plan {plan!r} has no per-period allocation to subscribe to",
            {"plan": plan, "plansWithAllocation": ",".join(allocating)[:500]})


class SubscriptionNotFound(CreditsError):
    """The account has no subscription (for ChangeSubscription and CancelSubscription: no
    ACTIVE one); metadata `accountId`."""

    reason = "SUBSCRIPTION_NOT_FOUND"

    def __init__(self, account_id: str, active: bool = True) -> None:
        super().__init__(
            f"account {account_id!r} has no {'active ' if active else ''}subscription",
            {"accountId": account_id})


class AlreadySubscribed(CreditsError):
    """The account has an ACTIVE subscription already (metadata `accountId`, `plan`): change
    it with ChangeSubscription, or cancel it first."""

    reason = "ALREADY_SUBSCRIBED"

    def __init__(self, account_id: str, plan: str) -> None:
        super().__init__(
            f"account {account_id!r} is subscribed to plan {plan!r} already: use "
            "ChangeSubscription to move it to another plan", {"accountId": account_id,
                                                              "plan": plan})


class SubscriptionPeriodMismatch(CreditsError):
    """A subscription changes only between plans of the same period (metadata `plan`,
    `period`, `currentPeriod`): cancel it and subscribe again to change the period."""

    reason = "SUBSCRIPTION_PERIOD_MISMATCH"

    def __init__(self, plan: str, period: str, current: str) -> None:
        super().__init__(
            f"plan {plan!r} allocates every {period}, the subscription every {current}: cancel "
            "the subscription and subscribe again to change the period",
            {"plan": plan, "period": period, "currentPeriod": current})


class SubscriptionActive(CreditsError):
    """The account's plan is its subscription's (metadata `accountId`, `plan`): ChangePlan
    does not move it; ChangeSubscription does."""

    reason = "SUBSCRIPTION_ACTIVE"

    def __init__(self, account_id: str, plan: str) -> None:
        super().__init__(
            f"account {account_id!r} is subscribed to plan {plan!r}: change its plan with "
            "ChangeSubscription (or cancel the subscription first)",
            {"accountId": account_id, "plan": plan})


class OrganizationNotFound(CreditsError):
    """No organisation has this id (metadata `organizationId`)."""

    reason = "ORGANIZATION_NOT_FOUND"

    def __init__(self, organization_id: str) -> None:
        super().__init__(f"no organization is called {organization_id!r}",
                         {"organizationId": organization_id})


class OrganizationExists(CreditsError):
    """An organisation of this id exists with another pool account (metadata
    `organizationId`, `poolAccountId`: its pool)."""

    reason = "ORGANIZATION_EXISTS"

    def __init__(self, organization_id: str, pool_account_id: str) -> None:
        super().__init__(
            f"organization {organization_id!r} exists, with pool account {pool_account_id!r}",
            {"organizationId": organization_id, "poolAccountId": pool_account_id})


class AccountInOrganization(CreditsError):
    """The account belongs to an organisation already, as a member or as its pool (metadata
    `accountId`, `organizationId`, `role`: member or pool); an account is in one at most."""

    reason = "ACCOUNT_IN_ORGANIZATION"

    def __init__(self, account_id: str, organization_id: str, role: str) -> None:
        super().__init__(
            f"account {account_id!r} is the {role} of organization {organization_id!r}: an "
            "account belongs to one organization at most" if role == "pool" else
            f"account {account_id!r} is a member of organization {organization_id!r}: remove "
            "it there first (an account is a member of one organization at most)",
            {"accountId": account_id, "organizationId": organization_id, "role": role})


class MemberExists(CreditsError):
    """The account is a member of this organisation already, with other caps (metadata
    `accountId`, `organizationId`): change them with SetMemberCaps."""

    reason = "MEMBER_EXISTS"

    def __init__(self, account_id: str, organization_id: str) -> None:
        super().__init__(
            f"account {account_id!r} is a member of organization {organization_id!r} already, "
            "with other caps: use SetMemberCaps", {"accountId": account_id,
                                                   "organizationId": organization_id})


class MemberNotFound(CreditsError):
    """The account is no member of this organisation (metadata `accountId`,
    `organizationId`)."""

    reason = "MEMBER_NOT_FOUND"

    def __init__(self, account_id: str, organization_id: str) -> None:
        super().__init__(
            f"account {account_id!r} is no member of organization {organization_id!r}",
            {"accountId": account_id, "organizationId": organization_id})


class MemberHasHolds(CreditsError):
    """A member is removed once its holds on the pool have ended (metadata `accountId`,
    `held`)."""

    reason = "MEMBER_HAS_HOLDS"

    def __init__(self, account_id: str, held: int) -> None:
        super().__init__(
            f"member {account_id!r} holds {held} credits of the pool: commit or release its "
            "reservations first", {"accountId": account_id, "held": str(held)})


class OrganizationFull(CreditsError):
    """An organisation has at most `membersMax` members (metadata `organizationId`,
    `membersMax`)."""

    reason = "ORGANIZATION_FULL"

    def __init__(self, organization_id: str, members_max: int) -> None:
        super().__init__(
            f"organization {organization_id!r} has {members_max} members, the most it may",
            {"organizationId": organization_id, "membersMax": str(members_max)})
