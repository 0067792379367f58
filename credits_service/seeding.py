"""`credits-service seed FILE`: demo accounts for development, from a TOML file, through the
ledger's own use cases: each account ensured on its plan (with the plan's welcome credits),
then its grants, each keyed by the account and its position, so seeding again changes
nothing. docs/seed.example.toml is an example."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from credits_service.domain.commands import EnsureAccountCommand, GrantCommand
from credits_service.domain.model import AMOUNT_MAX, IDENTIFIER_PATTERN, GrantType
from credits_service.service.ledger import Ledger

SEED_ACTOR = "seed"
_ACCOUNT_KEYS = {"account_id", "plan", "grants"}
_GRANT_KEYS = {"amount", "type", "expire_after_s", "priority", "reason"}


class SeedError(ValueError):
    """The seed file cannot be used; the message names the entry and the rule."""


@dataclass(frozen=True)
class SeedSummary:
    accounts: int
    accounts_created: int  # the others existed already
    grants: int  # each applied once, however often the file is seeded


def read_seed(text: str) -> list[dict[str, Any]]:
    """The accounts of a seed file, checked; SeedError names the first broken entry."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SeedError(f"not TOML: {exc}") from None
    accounts = document.get("accounts")
    if set(document) - {"accounts"} or not isinstance(accounts, list) or not accounts:
        raise SeedError("expected [[accounts]] tables, and nothing else")
    for n, account in enumerate(accounts, start=1):
        where = f"accounts[{n}]"
        if not isinstance(account, dict) or set(account) - _ACCOUNT_KEYS:
            raise SeedError(f"{where}: keys are {', '.join(sorted(_ACCOUNT_KEYS))}")
        if not IDENTIFIER_PATTERN.fullmatch(str(account.get("account_id", ""))):
            raise SeedError(f"{where}.account_id: 1-128 characters from A-Z a-z 0-9 '._:@-'")
        for m, grant in enumerate(account.get("grants", []), start=1):
            at = f"{where}.grants[{m}]"
            if not isinstance(grant, dict) or set(grant) - _GRANT_KEYS:
                raise SeedError(f"{at}: keys are {', '.join(sorted(_GRANT_KEYS))}")
            amount = grant.get("amount")
            if type(amount) is not int or not 1 <= amount <= AMOUNT_MAX:
                raise SeedError(f"{at}.amount: a whole number from 1 to {AMOUNT_MAX}")
            if grant.get("type", "PROMO") not in GrantType.__members__:
                raise SeedError(f"{at}.type: one of {', '.join(GrantType.__members__)}")
    return accounts


async def seed(ledger: Ledger, accounts: list[dict[str, Any]]) -> SeedSummary:
    """Ensure each account and apply its grants once (keys `seed:<account>:<n>`)."""
    created = grants = 0
    for account in accounts:
        account_id = account["account_id"]
        ensured = await ledger.ensure_account(
            EnsureAccountCommand(account_id, account.get("plan", "")), SEED_ACTOR)
        created += ensured.created
        for n, grant in enumerate(account.get("grants", []), start=1):
            grants += 1
            key = f"seed:{account_id}:{n}"
            expire_after_s = grant.get("expire_after_s")
            expire_time = None
            if expire_after_s is not None:
                expire_time = ensured.account.create_time + timedelta(seconds=expire_after_s)
            await ledger.grant(GrantCommand(
                account_id, grant["amount"], GrantType[grant.get("type", "PROMO")], key,
                reason=grant.get("reason", "seed"), expire_time=expire_time,
                priority=grant.get("priority")), SEED_ACTOR)
    return SeedSummary(len(accounts), created, grants)
