"""SyncCreditsClient: CreditsClient's surface for code without an event loop. One private
event loop runs in a daemon thread; each call is run there and waited for."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from credits_client.client import CreditsClient
from credits_client.hold import Hold, hold_of_call
from credits_client.types import Event

T = TypeVar("T")


class SyncCreditsClient:
    """Takes CreditsClient's arguments; its methods block and return the same results."""

    def __init__(self, target: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="credits-client")
        self._thread.start()
        self._client: CreditsClient = self._run(self._make(target, options))

    @staticmethod
    async def _make(target: str, options: dict[str, Any]) -> CreditsClient:
        return CreditsClient(target, **options)  # the channel binds to the running loop

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> SyncCreditsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        if name in ("hold", "metered", "watch_events") or not asyncio.iscoroutinefunction(method):
            raise AttributeError(name)

        @functools.wraps(method)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._run(method(*args, **kwargs))

        return blocking

    def watch_events(self, **options: Any) -> Iterator[Event]:
        """As CreditsClient.watch_events, a blocking iterator (`on_cursor` is called on the
        client's own thread). Leaving the loop, or closing the iterator, ends the stream."""
        stream = self._client.watch_events(**options)
        try:
            while True:
                try:
                    yield self._run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._run(stream.aclose())

    def hold(self, account_id: str, **options: Any) -> SyncHold:
        """`with client.hold(...) as hold:`, as CreditsClient.hold."""
        return SyncHold(self, self._client.hold(account_id, **options))

    def metered(self, *, account: str | Callable[..., str] = "account_id",
                **options: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """As CreditsClient.metered, for plain functions."""

        def decorate(function: Callable[..., T]) -> Callable[..., T]:
            signature = inspect.signature(function)
            wants_hold = "hold" in signature.parameters

            @functools.wraps(function)
            def metered_call(*args: Any, **kwargs: Any) -> T:
                account_id, values = hold_of_call(signature, account, options, args, kwargs)
                with self.hold(account_id, **values) as hold:
                    if wants_hold:
                        kwargs["hold"] = hold
                    return function(*args, **kwargs)

            return metered_call

        return decorate


class SyncHold:
    def __init__(self, client: SyncCreditsClient, hold: Hold) -> None:
        self._client = client
        self._hold = hold

    def __enter__(self) -> Hold:
        return self._client._run(self._hold.__aenter__())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._client._run(self._hold.__aexit__(exc_type, exc, traceback))


__all__ = ["SyncCreditsClient", "SyncHold"]
