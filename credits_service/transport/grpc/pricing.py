"""The price RPCs (Quote, GetRateCard): their validation, their mapping and their servicer
methods."""

from __future__ import annotations

import asyncio

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import QuoteQuery, QuoteResult
from credits_service.domain.rates import FEATURE_NAME_PATTERN, UNITS_MAX, Price, RateCard, Rounding
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.accounts import plan_name
from credits_service.transport.grpc.fields import FieldChecker

ROUNDING_TO_PROTO = {
    Rounding.UP: pb.ROUNDING_UP,
    Rounding.DOWN: pb.ROUNDING_DOWN,
    Rounding.NEAREST: pb.ROUNDING_NEAREST,
}


def feature_name(check: FieldChecker, field: str, value: str) -> str:
    if not FEATURE_NAME_PATTERN.fullmatch(value):
        check.fail(field, "is required: a feature of the rate card, 1-64 characters from "
                          "A-Z a-z 0-9 and '._-'")
    return value


def units(check: FieldChecker, field: str, value: int) -> int:
    if not 0 <= value <= UNITS_MAX:
        check.fail(field, f"must be between 0 and {UNITS_MAX}")
    return value


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


def price_message(price: Price) -> pb.Price:
    return pb.Price(cost_per_call=price.cost_per_call,
                    units_per_credit=price.units_per_credit or 0,
                    rounding=ROUNDING_TO_PROTO[price.rounding],
                    minimum_charge=price.minimum_charge)


def rate_card_response(card: RateCard, plan: str) -> pb.GetRateCardResponse:
    response = pb.GetRateCardResponse(version=card.version, plan=plan)
    for name in sorted(card.features):
        feature = card.features[name]
        message = response.features.add(
            feature=name, description=feature.description, unit=feature.unit,
            price=price_message(feature.price_for(plan)))
        if not plan:
            for plan_of, price in sorted(feature.plan_prices.items()):
                message.plan_prices[plan_of].CopyFrom(price_message(price))
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
