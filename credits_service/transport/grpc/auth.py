"""Who is calling and what they may do: bearer tokens per principal, three roles, and a
token bucket per principal. Checked by the interceptor before a request is even decoded.

Tokens are configured as lines `<name> <role> <sha256-hex of the token>`; the service never
holds or logs a token itself, only its digest.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from credits_service.domain.errors import PermissionDenied, RateLimited, Unauthenticated

TOKEN_BYTES = 32
NAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
_BEARER = "bearer "
_TOKEN_LENGTH_MAX = 512

CREDITS_SERVICE = "credits.v1.CreditsService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset({
    "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection",
})
# The services auth_open_services may name, by their setting's word
OPEN_SERVICES = {"health": frozenset({HEALTH_SERVICE}), "reflection": REFLECTION_SERVICES}


class Role(enum.Enum):
    SERVICE = "service"  # the backends metering work
    ADMIN = "admin"  # operators: everything
    BILLING = "billing"  # a payment webhook handler: PURCHASE grants (GrantsApi checks the type)


# What a billing principal may call of ours: Grant of the PURCHASE type only, subscriptions
# (what a payment provider's subscription events drive), and reads.
BILLING_METHODS = frozenset({"Grant", "EnsureAccount", "GetBalance", "History", "Quote",
                             "GetRateCard", "UsageSummary", "Subscribe", "ChangeSubscription",
                             "CancelSubscription", "GetSubscription", "WatchEvents"})

# What a service principal may call of ours; an admin may call everything. An allowlist, so an
# RPC added later is admin-only until it is listed here.
SERVICE_METHODS = frozenset({
    "EnsureAccount", "CheckAndReserve", "Commit", "Release", "ExtendReservation", "GetBalance",
    "History", "ListReservations", "BatchCheckAndReserve", "BatchCommit", "Quote",
    "GetRateCard", "UsageSummary", "GetSubscription", "GetOrganization",
})


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role

    def may_call(
        self, service: str, method: str, service_methods: Collection[str] = SERVICE_METHODS
    ) -> bool:
        """Whether this principal may call the method; `service_methods` are ours a service
        principal may call (SERVICE_METHODS, and those settings add)."""
        if self.role is Role.ADMIN:
            return True
        if service == CREDITS_SERVICE:
            return method in (BILLING_METHODS if self.role is Role.BILLING else service_methods)
        return service == HEALTH_SERVICE or service in REFLECTION_SERVICES


# Every call acts as this principal when authentication is disabled (local development).
ANONYMOUS = Principal("anonymous", Role.ADMIN)
# Callers of a service left open (auth_open_services) act as this principal.
PUBLIC = Principal("public", Role.SERVICE)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint_token() -> str:
    return "cst_" + secrets.token_urlsafe(TOKEN_BYTES)


def parse_token_lines(text: str) -> dict[str, Principal]:
    """Principals by token digest from `name role sha256` lines (blank lines, `#` comments and
    `;` separators allowed). Raises ValueError naming the bad line."""
    principals: dict[str, Principal] = {}
    names: set[str] = set()
    for number, raw in enumerate(re.split(r"[\n;]", text), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"token entry {number}: expected '<name> <role> <sha256>'")
        name, role, digest = parts
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"token entry {number}: bad principal name {name!r}")
        if role not in {r.value for r in Role}:
            raise ValueError(f"token entry {number}: role must be service, billing or admin")
        if not _DIGEST_PATTERN.fullmatch(digest):
            raise ValueError(f"token entry {number}: the digest must be 64 lowercase hex "
                             "characters (sha256 of the token)")
        if name in names or digest in principals:
            raise ValueError(f"token entry {number}: principal or digest listed twice")
        names.add(name)
        principals[digest] = Principal(name, Role(role))
    return principals


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float
    updated_s: float

    def take(self, now_s: float, cost: float = 1) -> float:
        """0 if a call costing `cost` tokens may go now (and take them), else seconds until
        they are available. A cost above the burst is charged as the burst."""
        cost = min(cost, self.burst)
        self.tokens = min(self.burst, self.tokens + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate_per_s


@dataclass
class Gatekeeper:
    """Authenticates a call's metadata, authorizes its method and applies the rate limit."""

    principals: Mapping[str, Principal]  # by token digest
    enabled: bool = True
    rate_limit_per_s: float = 0.0  # 0: unlimited
    rate_limit_burst: int = 1
    open_services: Collection[str] = frozenset()  # full service names callable without a token
    service_methods: Collection[str] = SERVICE_METHODS  # ours a service principal may call
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def admit(
        self, service: str, method: str, metadata: Sequence[tuple[str, str | bytes]] | None,
        cost: int = 1,
    ) -> Principal:
        """The principal calling, if it may call `method` of `service` now (taking `cost`
        from its rate); raises Unauthenticated, PermissionDenied or RateLimited."""
        if service in self.open_services:
            return PUBLIC
        principal = self._authenticate(metadata) if self.enabled else ANONYMOUS
        if not principal.may_call(service, method, self.service_methods):
            raise PermissionDenied(principal.name, principal.role.value, method)
        self.charge(principal, cost)
        return principal

    def charge(self, principal: Principal, cost: int) -> None:
        """Take `cost` more from the principal's rate (a batch's items beyond the first)."""
        if self.rate_limit_per_s <= 0 or cost <= 0:
            return
        now_s = time.monotonic()
        bucket = self._buckets.get(principal.name)
        if bucket is None:
            bucket = self._buckets[principal.name] = TokenBucket(
                self.rate_limit_per_s, self.rate_limit_burst, self.rate_limit_burst, now_s)
        wait_s = bucket.take(now_s, cost)
        if wait_s > 0:
            raise RateLimited(principal.name, wait_s)

    def _authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        values = [value for key, value in metadata or () if key == "authorization"]
        if not values:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        value = values[0]
        if isinstance(value, bytes) or len(values) > 1 or len(value) > _TOKEN_LENGTH_MAX:
            raise Unauthenticated("malformed authorization metadata")
        if not value[: len(_BEARER)].lower() == _BEARER:
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        principal = self.principals.get(token_digest(value[len(_BEARER):].strip()))
        if principal is None:
            raise Unauthenticated("unknown or revoked token")
        return principal


_caller: ContextVar[Principal] = ContextVar("caller")


def caller() -> Principal:
    """The principal of the call being served (set by the interceptor once admitted)."""
    return _caller.get()


def set_caller(principal: Principal) -> None:
    _caller.set(principal)
