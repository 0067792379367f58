"""The price RPCs (Quote, GetRateCard): their validation, their mapping and their servicer
methods."""

from __future__ import annotations

import asyncio

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import QuoteQuery, QuoteResult
from credits_service.domain.rates import RateCard
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.accounts import plan_name
from credits_service.transport.grpc.fields import FieldChecker, feature_name, units


def quote_query(request: pb.QuoteRequest) -> QuoteQuery:
    check = FieldChecker()
    query = QuoteQuery(
        account_id=check.identifier("account_id", request.account_id),
        feature=feature_name(check, "feature", request.feature),
        units=units(check, "units", request.units),
    )
    check.done()
    return query


def quote_response(result: QuoteResult) -> pb.QuoteResponse:
    quote = result.quote
    return pb.QuoteResponse(
        cost=quote.cost, feature=quote.feature, units=quote.units,
        rate_card_version=quote.version, plan=quote.plan, affordable=result.affordable,
        balance=messages.balance(result.balance))


def rate_card_response(card: RateCard, plan: str) -> pb.GetRateCardResponse:
    response = pb.GetRateCardResponse(version=card.version, plan=plan)
    for name in sorted(card.features):
        feature = card.features[name]
        message = response.features.add(
            feature=name, description=feature.description, unit=feature.unit,
            price=messages.price_message(feature.price_for(plan)))
        if not plan:
            for plan_of, price in sorted(feature.plan_prices.items()):
                message.plan_prices[plan_of].CopyFrom(messages.price_message(price))
    return response


class PricingApi:
    _ledger: Ledger

    async def Quote(
        self, request: pb.QuoteRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuoteResponse:
        return quote_response(await self._ledger.quote(quote_query(request)))

    async def ReloadRateCard(
        self, request: pb.ReloadRateCardRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadRateCardResponse:
        previous, card = await asyncio.to_thread(self._ledger.reload_rate_card)
        return pb.ReloadRateCardResponse(version=card.version, previous_version=previous.version,
                                         file=card.source, feature_count=len(card.features))

    async def GetRateCard(
        self, request: pb.GetRateCardRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRateCardResponse:
        check = FieldChecker()
        plan = plan_name(check, "plan", request.plan)
        account_id = (check.identifier("account_id", request.account_id)
                      if request.account_id else "")
        if plan and account_id:
            check.fail("account_id", "give a plan or an account, not both")
        check.done()
        card, shown = await self._ledger.rate_card(plan, account_id)
        return rate_card_response(card, shown)
