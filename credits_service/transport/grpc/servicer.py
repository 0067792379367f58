"""The CreditsService servicer: the API families' methods in one class, as grpc registers one
servicer per service. Each method validates and maps its request, calls one use case and maps
the result back; the interceptor (interceptors.py) has admitted the caller before."""

from __future__ import annotations

from credits.v1 import credits_pb2_grpc
from credits_service.service.ledger import Ledger
from credits_service.service.webhooks import Webhooks
from credits_service.transport.grpc.accounts import AccountsApi
from credits_service.transport.grpc.adjustments import AdjustmentsApi
from credits_service.transport.grpc.alerts import AlertsApi
from credits_service.transport.grpc.events import EventsApi, Watching
from credits_service.transport.grpc.fields import RequestLimits
from credits_service.transport.grpc.grants import GrantsApi
from credits_service.transport.grpc.organizations import OrganizationsApi
from credits_service.transport.grpc.pricing import PricingApi
from credits_service.transport.grpc.queries import QueriesApi, QueryRequests
from credits_service.transport.grpc.refunds import RefundsApi
from credits_service.transport.grpc.reservations import ReservationRequests, ReservationsApi
from credits_service.transport.grpc.subscriptions import SubscriptionsApi
from credits_service.transport.grpc.transfers import TransfersApi
from credits_service.transport.grpc.usage import UsageApi
from credits_service.transport.grpc.webhooks import WebhooksApi


class CreditsServicer(
    AccountsApi, AdjustmentsApi, TransfersApi, RefundsApi, GrantsApi, ReservationsApi,
    QueriesApi, PricingApi, UsageApi, SubscriptionsApi, OrganizationsApi, EventsApi, AlertsApi,
    WebhooksApi,
    credits_pb2_grpc.CreditsServiceServicer,
):
    def __init__(
        self, ledger: Ledger, limits: RequestLimits, watching: Watching | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        self._ledger = ledger
        self._watching = watching
        self._webhooks = webhooks
        self._reservation_requests = ReservationRequests(limits)
        self._query_requests = QueryRequests()
