"""Reads: an account's balance and lots, its ledger, its reservations. Pages are keyset
pages with signed tokens (page_tokens.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from credits_service.domain import errors
from credits_service.domain.commands import (
    BalanceQuery,
    BalanceReport,
    HistoryPage,
    HistoryQuery,
    ReservationPage,
    ReservationsQuery,
)
from credits_service.domain.model import LOTS_LISTED_MAX
from credits_service.domain.rows import BalanceListing
from credits_service.service.accounts import AccountOpening
from credits_service.service.group_commit import GroupCommitter
from credits_service.service.page_tokens import PageTokens, filters_digest
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions
from credits_service.settings import LedgerSettings

_ENTRY_ID_MAX = 2**63 - 1  # ledger entry ids are bigint


class Queries:
    def __init__(
        self,
        transactions: Transactions,
        settings: LedgerSettings,
        page_tokens: PageTokens,
        opening: AccountOpening,
    ) -> None:
        self._transactions = transactions
        self._opening = opening
        self._page_size_default = settings.page_size_default
        self._page_size_max = settings.page_size_max
        self._tokens = page_tokens
        # Concurrent GetBalance calls are read together, in one statement outside any
        # transaction (bench/README.md, "What each optimization measured")
        self._balances: GroupCommitter[tuple[str, int | None], BalanceListing | None] = (
            GroupCommitter(self._balances_of, group_size_max=settings.group_size_max,
                           concurrency=settings.group_concurrency))

    async def _balances_of(
        self, asked: Sequence[tuple[str, int | None]]
    ) -> list[BalanceListing | None]:
        async def work(uow: UnitOfWork) -> list[BalanceListing | None]:
            return await uow.accounts.balances(asked, LOTS_LISTED_MAX + 1)

        return await self._transactions.read(work)

    async def get_balance(self, query: BalanceQuery, actor: str) -> BalanceReport:
        """The account's balance and lots; an unknown account is created first by `actor`'s
        call (auto_create_accounts), or AccountNotFound. An account that exists and is no
        organisation's member is read with the calls beside it, in one statement."""
        listing = await self._balances.submit((query.account_id, query.expiring_within_ms))
        if listing is not None and listing.summary.pool_account_id is None:
            summary, lots = listing.summary, listing.lots
            return BalanceReport(
                account=summary.account, totals=summary.totals, balance=summary.balance,
                lots=tuple(lots[:LOTS_LISTED_MAX]), lots_truncated=len(lots) > LOTS_LISTED_MAX,
                expiring_amount=listing.expiring)
        return await self._get_balance_in_transaction(query, actor)

    async def _get_balance_in_transaction(
        self, query: BalanceQuery, actor: str
    ) -> BalanceReport:
        """GetBalance of a member (its pool and standing too) or of an account that does not
        exist (yet), in a transaction."""

        async def work(uow: UnitOfWork) -> BalanceReport | errors.Declined:
            summary = await uow.accounts.summary(query.account_id)
            if summary is None and await self._opening.on_first_use(
                    uow, query.account_id, actor) is not None:
                summary = await uow.accounts.summary(query.account_id)
            if summary is None:
                return errors.AccountNotFound(query.account_id)
            listed, expiring = await uow.lots.listing(
                query.account_id, LOTS_LISTED_MAX + 1, query.expiring_within_ms)
            member = pool = today = None
            if summary.pool_account_id is not None:
                member = await uow.organizations.member(query.account_id)
                pool = await uow.accounts.get(summary.pool_account_id)
                today = (await uow.now()).date()
            return BalanceReport(
                account=summary.account,
                totals=summary.totals,
                balance=summary.balance,
                lots=tuple(listed[:LOTS_LISTED_MAX]),
                lots_truncated=len(listed) > LOTS_LISTED_MAX,
                expiring_amount=expiring,
                member=member,
                pool=pool,
                today=today,
            )

        return await self._transactions.run(work)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """One page of the account's ledger, newest first, keyset-paginated by entry id."""
        page_size = self._page_size(query.page_size)
        filters = history_filters(query)
        before = (self._tokens.decode(query.page_token, filters, entry_id_position)
                  if query.page_token else None)

        async def work(uow: UnitOfWork) -> HistoryPage | errors.Declined:
            entries = await uow.entries.page(
                account_id=query.account_id,
                before_entry_id=before,
                entry_types=query.entry_types,
                start_time=query.start_time,
                end_time=query.end_time,
                limit=page_size + 1,
                grant_types=query.grant_types,
            )
            if not entries and before is None and await uow.accounts.get(query.account_id) is None:
                return errors.AccountNotFound(query.account_id)
            token = (self._tokens.encode(entries[page_size - 1].entry_id, filters)
                     if len(entries) > page_size else "")
            return HistoryPage(entries=tuple(entries[:page_size]), next_page_token=token)

        return await self._transactions.run(work)

    async def list_reservations(self, query: ReservationsQuery) -> ReservationPage:
        """One page of the account's reservations, newest first, keyset-paginated."""
        page_size = self._page_size(query.page_size)
        filters = reservations_filters(query)
        before = (self._tokens.decode(query.page_token, filters, reservation_position)
                  if query.page_token else None)

        async def work(uow: UnitOfWork) -> ReservationPage | errors.Declined:
            found = await uow.reservations.page(
                account_id=query.account_id,
                statuses=query.statuses,
                before=before,
                limit=page_size + 1,
            )
            if not found and before is None and await uow.accounts.get(query.account_id) is None:
                return errors.AccountNotFound(query.account_id)
            token = ""
            if len(found) > page_size:
                last = found[page_size - 1]
                token = self._tokens.encode(
                    [last.create_time.isoformat(), last.reservation_id], filters)
            return ReservationPage(reservations=tuple(found[:page_size]), next_page_token=token)

        return await self._transactions.run(work)

    def _page_size(self, asked: int) -> int:
        return min(asked or self._page_size_default, self._page_size_max)


def history_filters(query: HistoryQuery) -> str:
    """What a History page token is bound to: the account and every filter, not the page
    size (a client may change it between pages)."""
    parts: list[Any] = [
        query.account_id,
        sorted(t.value for t in query.entry_types),
        query.start_time.isoformat() if query.start_time else None,
        query.end_time.isoformat() if query.end_time else None,
    ]
    if query.grant_types:  # only then: tokens made before this filter existed stay valid
        parts.append(sorted(t.value for t in query.grant_types))
    return filters_digest(parts)


def reservations_filters(query: ReservationsQuery) -> str:
    """What a ListReservations page token is bound to: the account and the statuses."""
    return filters_digest(
        ["reservations", query.account_id, sorted(s.value for s in query.statuses)])


def entry_id_position(after: Any) -> int:
    """A History token's position: the last entry id of the page before."""
    # type() is int: JSON true is a bool, and bool is an int in Python.
    if type(after) is not int or not 1 <= after <= _ENTRY_ID_MAX:
        raise ValueError(after)
    return after


def reservation_position(after: Any) -> tuple[datetime, str]:
    """A ListReservations token's position: the last reservation's (create_time, id)."""
    create_time, reservation_id = after
    if type(create_time) is not str or type(reservation_id) is not str:
        raise ValueError(after)
    parsed = datetime.fromisoformat(create_time)
    if parsed.tzinfo is None:
        raise ValueError(create_time)
    parsed.astimezone(UTC)  # OverflowError at the edges of the calendar
    return parsed, str(uuid.UUID(reservation_id))
