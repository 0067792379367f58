"""The read RPCs (GetBalance, ListReservations, History): their validation, their mapping and
their servicer methods."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import BalanceQuery, HistoryQuery, ReservationsQuery
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.auth import caller
from credits_service.transport.grpc.fields import FieldChecker
from credits_service.transport.grpc.organizations import member

EXPIRING_WITHIN_MAX_MS = 3650 * 86_400_000


class QueryRequests:
    """Turns each read request into its query, or raises InvalidArgument. Page sizes above
    the maximum are capped by the service, not refused."""

    def get_balance(self, request: pb.GetBalanceRequest) -> BalanceQuery:
        check = FieldChecker()
        query = BalanceQuery(
            account_id=check.identifier("account_id", request.account_id),
            expiring_within_ms=check.duration_ms(
                "expiring_within", request.expiring_within, 0, EXPIRING_WITHIN_MAX_MS
            ) if request.HasField("expiring_within") else None,
        )
        check.done()
        return query

    def list_reservations(self, request: pb.ListReservationsRequest) -> ReservationsQuery:
        check = FieldChecker()
        check.page(request.page_size, request.page_token)
        statuses = set()
        for value in request.statuses:
            status = messages.RESERVATION_STATUS_FROM_PROTO.get(value)
            if status is None:
                check.fail("statuses", "must hold ReservationStatus values other than "
                                       "UNSPECIFIED")
                break
            statuses.add(status)
        query = ReservationsQuery(
            account_id=check.identifier("account_id", request.account_id),
            page_size=max(request.page_size, 0),
            page_token=request.page_token,
            statuses=frozenset(statuses),
        )
        check.done()
        return query

    def history(self, request: pb.HistoryRequest) -> HistoryQuery:
        check = FieldChecker()
        check.page(request.page_size, request.page_token)
        entry_types = set()
        for value in request.types:
            entry_type = messages.ENTRY_TYPE_FROM_PROTO.get(value)
            if entry_type is None:
                check.fail("types", "must hold EntryType values other than UNSPECIFIED")
                break
            entry_types.add(entry_type)
        start = check.timestamp("start_time", request.start_time) if request.HasField(
            "start_time") else None
        end = check.timestamp("end_time", request.end_time) if request.HasField(
            "end_time") else None
        if start is not None and end is not None and start >= end:
            check.fail("end_time", "must be after start_time")
        grant_types = set()
        for value in request.grant_types:
            grant_type = messages.GRANT_TYPE_FROM_PROTO.get(value)
            if grant_type is None:
                check.fail("grant_types", "must hold GrantType values other than UNSPECIFIED")
                break
            grant_types.add(grant_type)
        query = HistoryQuery(
            account_id=check.identifier("account_id", request.account_id),
            grant_types=frozenset(grant_types),
            page_size=max(request.page_size, 0),
            page_token=request.page_token,
            entry_types=frozenset(entry_types),
            start_time=start,
            end_time=end,
        )
        check.done()
        return query


class QueriesApi:
    _ledger: Ledger
    _query_requests: QueryRequests

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        report = await self._ledger.get_balance(
            self._query_requests.get_balance(request), caller().name)
        response = pb.GetBalanceResponse(
            balance=messages.balance(report.balance),
            lots=[messages.lot(lot) for lot in report.lots],
            lots_truncated=report.lots_truncated,
            expiring_amount=report.expiring_amount,
            account=messages.account(report.account),
            totals=messages.lifetime_totals(report.balance, report.totals),
        )
        if report.member is not None and report.pool is not None and report.today:
            response.member.CopyFrom(member(report.member, report.today))
            response.pool_balance.CopyFrom(messages.balance(report.pool))
        return response

    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReservationsResponse:
        page = await self._ledger.list_reservations(
            self._query_requests.list_reservations(request))
        return pb.ListReservationsResponse(
            reservations=[messages.reservation(r) for r in page.reservations],
            next_page_token=page.next_page_token,
        )

    async def History(
        self, request: pb.HistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.HistoryResponse:
        page = await self._ledger.history(self._query_requests.history(request))
        return pb.HistoryResponse(
            entries=[messages.ledger_entry(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )
