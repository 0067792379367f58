"""CheckAndReserve: hold credits if available covers them, drawing from lots in consumption
order, once per idempotency key (declines too).

Concurrent calls share transactions (group_commit.py): a group finds its stored keys and
locks its accounts, expires due lots and finds free ones, then writes every reservation, lot,
balance and key in one statement.

A member of an organisation whose own available credits do not cover a call draws from its
organisation's pool instead, never from both (docs/organizations.md): the group leaves such
calls to a second transaction, in which the pools' accounts and then the members' rows are
locked, and a call is placed on its pool if the pool's available credits and the member's
remaining cap both cover it. The member's row counts the hold by a trigger (migration 0014).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from credits_service.domain import errors, lots
from credits_service.domain.commands import ReserveCommand, ReserveResult
from credits_service.domain.ids import new_reservation_ids
from credits_service.domain.model import (
    AccountStatus,
    BalanceSnapshot,
    LotDraw,
    Reservation,
    ReservationStatus,
)
from credits_service.domain.organizations import Member
from credits_service.domain.rates import HeldPrice
from credits_service.domain.rows import FreeLot, HeldTotals, KeyedAccount, KeyRecord
from credits_service.service import idempotency, responses
from credits_service.service.accounts import AccountOpening
from credits_service.service.group_commit import GroupCommitter
from credits_service.service.ports import UnitOfWork
from credits_service.service.pricing import Pricing
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import write_off_expired
from credits_service.settings import LedgerSettings

METHOD = "CheckAndReserve"
Call = tuple[ReserveCommand, str]  # the command and its actor, whose scope its key is in
# A price refused (UnknownFeature, CostTooLarge) is an answer too, stored with no key
Answer = ReserveResult | errors.Declined | errors.CreditsError


class _ToPool(NamedTuple):
    """A member's call its own credits do not cover: for its pool, in a second transaction
    (with what its own account had available, should it be a member no more by then)."""

    pool_account_id: str
    available: int


class Reserving:
    def __init__(
        self,
        transactions: Transactions,
        settings: LedgerSettings,
        opening: AccountOpening,
        metrics: LedgerMetrics,
        pricing: Pricing,
    ) -> None:
        self._transactions = transactions
        self._pricing = pricing
        self._opening = opening
        self._metrics = metrics
        self._ttl_default_ms = int(settings.reservation_ttl_default_s * 1000)
        self._group: GroupCommitter[Call, Answer] = GroupCommitter(
            self.check_and_reserve_many,
            group_size_max=settings.group_size_max,
            concurrency=settings.group_concurrency,
            on_group=lambda size: metrics.grouped(METHOD, size),
        )

    async def check_and_reserve(self, command: ReserveCommand, actor: str) -> ReserveResult:
        """Place a reservation, or raise the decline (stored with the key, and replayed)."""
        outcome = await self._group.submit((command, actor))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def check_and_reserve_many(self, calls: Sequence[Call]) -> list[Answer]:
        """Place several reservations in one transaction, each call with its own idempotency
        key (scoped to its actor) and its own result or decline: the same answers as placing
        them one by one, in order. The same key twice answers twice alike."""
        digests = [idempotency.request_hash(METHOD, command) for command, _ in calls]
        first: dict[tuple[str, str], int] = {}
        for i, (command, actor) in enumerate(calls):
            first.setdefault((actor, command.idempotency_key), i)

        async def work(uow: UnitOfWork, pooled: dict[int, _ToPool]) -> list[Answer]:
            outcomes: list[Any] = [None] * len(calls)
            firsts = [(pair, i) for pair, i in first.items() if not pooled or i in pooled]
            stored, snapshots, inactive, plans, pools = await uow.groups.find_and_lock([
                KeyedAccount(scope, key, _account_of(calls, pooled, i))
                for (scope, key), i in firsts
            ])
            new: list[int] = []  # in call order, as first is
            for (_, key), i in firsts:
                found = stored.get((calls[i][1], key))
                if found is None:
                    new.append(i)
                elif found.request_hash != digests[i]:
                    outcomes[i] = errors.IdempotencyKeyReused(key)
                else:
                    assert found.response is not None, "a committed key always has its response"
                    outcomes[i] = responses.decode(found.response)
                    uow.on_commit(lambda: self._metrics.replayed(METHOD))
            if new:
                members = (await uow.organizations.lock_members(
                    calls[i][0].account_id for i in new) if pooled else {})
                await self._place(uow, calls, new, outcomes, snapshots, inactive, plans,
                                  digests, pools, pooled, members)
            return outcomes

        outcomes = await self._transactions.run(lambda uow: work(uow, {}), grouped=True)
        pooled = {i: outcome for i, outcome in enumerate(outcomes)
                  if isinstance(outcome, _ToPool)}
        if pooled:
            from_pools = await self._transactions.run(
                lambda uow: work(uow, pooled), grouped=True)
            for i in pooled:
                outcomes[i] = from_pools[i]
        for i, (command, actor) in enumerate(calls):
            j = first[(actor, command.idempotency_key)]
            if j != i:
                outcomes[i] = (outcomes[j] if digests[i] == digests[j]
                               else errors.IdempotencyKeyReused(command.idempotency_key))
        return outcomes

    async def _place(
        self,
        uow: UnitOfWork,
        calls: Sequence[Call],
        indexes: list[int],
        outcomes: list[Any],
        snapshots: dict[str, BalanceSnapshot],
        inactive: dict[str, AccountStatus],
        plans: dict[str, str],
        digests: list[bytes],
        pools: dict[str, str],
        pooled: dict[int, _ToPool],
        members: dict[str, Member],
    ) -> None:
        """Decide and write the reservations of calls[i] for i in `indexes` (their keys not
        stored yet, their accounts locked with these `snapshots`), in that order, into
        outcomes[i], and store their keys with the answers: expire due lots, draw from free
        lots in consumption order, write everything set-based. A key another transaction
        stored meanwhile rolls all back, to run again. Accounts not found are created first
        (auto_create_accounts). Calls on accounts that are not ACTIVE (`inactive`) are
        declined; a call declined for its account's existence or status stores no key, so
        that it succeeds once the account exists and is active. A call of a feature holds its
        cost by the card in force (one card for the group), at its account's plan's price; a
        price that cannot be (the feature gone in a reload, a cost past the largest amount)
        fails the call alone and stores no key. A call of a member (its account in `pools`)
        that its own available credits do not cover is left to its pool (_ToPool); in the
        pools' transaction, `pooled` names each call's pool, which it is placed on, priced at
        the pool's plan, if the member's row (`members`, locked) leaves room under its caps."""
        amounts, prices = self._price(calls, indexes, outcomes, plans, pooled)
        if not pooled:
            await self._open_missing(uow, calls, [i for i in indexes if outcomes[i] is None],
                                     snapshots)
        if prices and len(plans) < len(snapshots):
            # An account not found at first was priced at the default plan: another
            # transaction may have created it on another plan meanwhile. Price its calls
            # again at the plan of the account now locked.
            await self._price_again(uow, calls, outcomes, snapshots, plans, amounts, prices)
        wanted: dict[str, int] = {}  # an unlimited account draws no lot: it wants none
        for i in indexes:
            account_id = _account_of(calls, pooled, i)
            snapshot = snapshots.get(account_id)
            if snapshot is not None and account_id not in inactive and outcomes[i] is None:
                wanted[account_id] = wanted.get(account_id, 0) + (
                    0 if snapshot.unlimited else amounts[i])
        free: dict[str, list[FreeLot]] = {}
        now = datetime.min  # set below whenever a reservation can be placed
        if wanted:
            found = await uow.groups.expire_and_find(list(snapshots), wanted)
            free, now = found.free, found.now
            snapshots.update(await write_off_expired(uow, found.expired, self._metrics))
        placed: list[tuple[int, Reservation]] = []
        lot_holds: dict[int, int] = {}
        held: dict[str, HeldTotals] = {}
        reservation_ids = iter(new_reservation_ids(len(indexes)))
        for i in indexes:
            if outcomes[i] is not None:  # its price refused: nothing to place
                continue
            command = calls[i][0]
            account_id = _account_of(calls, pooled, i)
            member: Member | None = None
            amount = amounts[i]
            snapshot = snapshots.get(account_id)
            if snapshot is None:
                outcomes[i] = errors.AccountNotFound(account_id)
                continue
            if inactive and account_id in inactive:
                outcomes[i] = (errors.AccountFrozen(account_id)
                               if inactive[account_id] is AccountStatus.FROZEN
                               else errors.AccountClosed(account_id))
                continue
            if pooled:
                member = members.get(command.account_id)
                if member is None or member.pool_account_id != account_id:
                    # a member no more: answered as its own account was found
                    outcomes[i] = errors.InsufficientCredits(
                        command.account_id, pooled[i].available, amount)
                    continue
                if not member.may_hold(amount, now.date()):
                    outcomes[i] = errors.MemberCapExceeded(
                        command.account_id, account_id, member.remaining(now.date()) or 0,
                        amount)
                    continue
            if snapshot.available < amount:
                pool = pools.get(account_id)
                outcomes[i] = (_ToPool(pool, snapshot.available) if pool is not None else
                               errors.InsufficientCredits(account_id, snapshot.available, amount))
                continue
            if member is not None:
                members[member.account_id] = member.holding(amount)
            # With a credit limit, what the lots do not cover is held beyond them: the
            # reservation's amount less its draws (all of it on an unlimited account).
            draws = lots.take(free[account_id], amount, partial=snapshot.credit_limit > 0)
            if draws is None:
                raise errors.LotsOutOfStep(account_id)
            free[account_id] = lots.left_after(free[account_id], draws)
            for lot_id, part in draws:
                lot_holds[lot_id] = lot_holds.get(lot_id, 0) + part
            snapshots[account_id] = snapshot = snapshot.with_reservation(amount)
            credits, count = held.get(account_id, (0, 0))
            held[account_id] = HeldTotals(credits + amount, count + 1)
            reservation = Reservation(
                reservation_id=next(reservation_ids),
                account_id=account_id,
                amount=amount,
                status=ReservationStatus.ACTIVE,
                committed_amount=None,
                create_time=now,
                expire_time=now + timedelta(milliseconds=command.ttl_ms or self._ttl_default_ms),
                finish_time=None,
                metadata=dict(command.metadata),
                draws=tuple(LotDraw(lot_id, part) for lot_id, part in draws),
                price=prices.get(i),
                member_account_id=member.account_id if member is not None else None,
            )
            placed.append((i, reservation))
            outcomes[i] = ReserveResult(reservation=reservation, balance=snapshot)
        keys = [KeyRecord(calls[i][1], calls[i][0].idempotency_key, digests[i],
                          responses.encode(outcomes[i]))
                for i in indexes if _stored(outcomes[i])]
        if not placed:
            if keys:
                await uow.groups.complete(METHOD, keys)
            return
        written = await uow.groups.place(
            lot_holds, held, [r for _, r in placed], [calls[i][1] for i, _ in placed], METHOD,
            keys,
        )
        draws_written = sum(len(r.draws) for _, r in placed)
        if (any(written.balances.get(account_id) != snapshots[account_id] for account_id in held)
                or (written.lots, written.reservations, written.draws, written.keys)
                != (len(lot_holds), len(placed), draws_written, len(keys))):
            raise errors.LotsOutOfStep(next(iter(held)))
        uow.on_commit(lambda: self._metrics.reserved(len(placed)))

    def _price(
        self, calls: Sequence[Call], indexes: list[int], outcomes: list[Any],
        plans: dict[str, str], pooled: dict[int, _ToPool] | None = None,
    ) -> tuple[dict[int, int], dict[int, HeldPrice]]:
        """The amount each call of `indexes` holds, and the price of those of a feature, by
        one card, at the price of its account's plan (an account not found would be opened
        on the default plan; a call on a pool, `pooled`, at the pool's); a call whose price
        fails gets that error as its outcome, before any account is opened for it."""
        amounts: dict[int, int] = {}
        prices: dict[int, HeldPrice] = {}
        card = None
        for i in indexes:
            command = calls[i][0]
            if command.feature is None:
                amounts[i] = command.amount
                continue
            card = card or self._pricing.card
            try:
                price = card.hold_price(
                    command.feature, command.units or 0,
                    plans.get(_account_of(calls, pooled or {}, i))
                    or self._opening.plan("").name)
            except (errors.UnknownFeature, errors.CostTooLarge) as refused:
                outcomes[i] = refused
                continue
            amounts[i] = price.cost
            prices[i] = price
        return amounts, prices

    async def _price_again(
        self, uow: UnitOfWork, calls: Sequence[Call], outcomes: list[Any],
        snapshots: dict[str, BalanceSnapshot], plans: dict[str, str],
        amounts: dict[int, int], prices: dict[int, HeldPrice],
    ) -> None:
        for account_id in sorted(set(snapshots) - set(plans)):
            account = await uow.accounts.profile(account_id)
            assert account is not None, "an account locked in this transaction exists"
            plans[account_id] = account.plan
        again = [i for i, price in prices.items()
                 if price.plan != plans[calls[i][0].account_id]]
        for i in again:
            del prices[i], amounts[i]
        repriced, reprices = self._price(calls, again, outcomes, plans)
        amounts.update(repriced)
        prices.update(reprices)

    async def _open_missing(
        self, uow: UnitOfWork, calls: Sequence[Call], indexes: list[int],
        snapshots: dict[str, BalanceSnapshot],
    ) -> None:
        """Create the accounts of calls[i] (i in `indexes`) that were not found, in account
        order, adding them to `snapshots` (unless auto_create_accounts is off). Two groups
        creating accounts the other one locked deadlock; one of them runs again."""
        actors: dict[str, str] = {}
        for i in indexes:
            command, actor = calls[i]
            if command.account_id not in snapshots:
                actors.setdefault(command.account_id, actor)
        for account_id in sorted(actors):
            opened = await self._opening.on_first_use(uow, account_id, actors[account_id])
            if opened is not None:
                snapshots[account_id] = opened


def _account_of(calls: Sequence[Call], pooled: dict[int, _ToPool], i: int) -> str:
    """The account call i holds on: its pool's in the pools' transaction, else its own."""
    to_pool = pooled.get(i)
    return to_pool.pool_account_id if to_pool is not None else calls[i][0].account_id


def _stored(outcome: Answer) -> bool:
    """Whether the outcome is stored with its key: a result, or a decline but for those about
    the account itself; never a refused price (bad input: nothing is written)."""
    if isinstance(outcome, errors.Declined):
        return outcome.stored
    return not isinstance(outcome, errors.CreditsError | _ToPool)
