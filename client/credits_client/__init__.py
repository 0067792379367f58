"""The Python client of credits-service (client/README.md).

    async with CreditsClient("localhost:50051", token=token) as client:
        async with client.hold("user-42", feature="llm-tokens", units=2_000) as hold:
            answer = await call_the_model(...)
            hold.commit(units=answer.usage.total_tokens)

SyncCreditsClient has the same methods for code without an event loop.
"""

from credits_client.client import CreditsClient
from credits_client.errors import (
    AccountClosed,
    AccountFrozen,
    AccountNotFound,
    CreditsError,
    DeadlineExceeded,
    IdempotencyKeyReused,
    InsufficientCredits,
    InvalidArgument,
    MemberCapExceeded,
    PermissionDenied,
    RateLimited,
    ReservationAlreadyCommitted,
    ReservationExpired,
    ReservationNotFound,
    ReservationReleased,
    Unauthenticated,
    Unavailable,
    UnknownFeature,
)
from credits_client.hold import Hold
from credits_client.offline import FailOpen
from credits_client.sync import SyncCreditsClient, SyncHold
from credits_client.types import (
    Account,
    AccountChange,
    Balance,
    BalanceAlert,
    CommitItem,
    EnsureAccountResult,
    EntriesResult,
    Event,
    GrantResult,
    HistoryPage,
    HoldResult,
    LedgerEntry,
    Quote,
    Reservation,
    ReservationPage,
    ReserveItem,
    TransferResult,
)

__all__ = [
    "Account",
    "AccountChange",
    "AccountClosed",
    "AccountFrozen",
    "AccountNotFound",
    "Balance",
    "BalanceAlert",
    "CommitItem",
    "CreditsClient",
    "CreditsError",
    "DeadlineExceeded",
    "EnsureAccountResult",
    "EntriesResult",
    "Event",
    "FailOpen",
    "GrantResult",
    "HistoryPage",
    "Hold",
    "HoldResult",
    "IdempotencyKeyReused",
    "InsufficientCredits",
    "InvalidArgument",
    "LedgerEntry",
    "MemberCapExceeded",
    "PermissionDenied",
    "Quote",
    "RateLimited",
    "Reservation",
    "ReservationAlreadyCommitted",
    "ReservationExpired",
    "ReservationNotFound",
    "ReservationPage",
    "ReservationReleased",
    "ReserveItem",
    "SyncCreditsClient",
    "SyncHold",
    "TransferResult",
    "Unauthenticated",
    "Unavailable",
    "UnknownFeature",
]
