"""An LLM call metered by tokens: hold what the estimate costs, run the model, commit the
tokens it really used (the rate card's `llm` feature prices them: docs/rates.md).

    PYTHONPATH=client .venv/bin/python examples/llm_tokens.py   # against localhost:50051
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from credits_client import CreditsClient


@dataclass
class Completion:
    text: str
    total_tokens: int


Model = Callable[[str, int], Awaitable[Completion]]


async def answer(client: CreditsClient, account_id: str, prompt: str, model: Model,
                 max_tokens: int = 2_000) -> Completion:
    """The model's answer to `prompt`, paid by `account_id`: the hold covers the most the
    call may use (the prompt's tokens, roughly, plus `max_tokens`); the commit takes what it
    used. InsufficientCredits before the model runs when the account cannot cover it."""
    estimate = len(prompt) // 4 + max_tokens
    async with client.hold(account_id, feature="llm", units=estimate) as hold:
        completion = await model(prompt, max_tokens)
        hold.commit(units=completion.total_tokens)
    return completion


async def echo_model(prompt: str, max_tokens: int) -> Completion:
    """A stand-in for the model: answers with the prompt, using a token per 4 characters."""
    await asyncio.sleep(0.01)
    return Completion(prompt, len(prompt) // 4 + 3)


async def main() -> None:
    async with CreditsClient(os.environ.get("CREDITS_TARGET", "localhost:50051")) as client:
        completion = await answer(client, "user-42", "What is a credit lot?", echo_model)
        print(completion.text, "-", completion.total_tokens, "tokens")


if __name__ == "__main__":
    asyncio.run(main())
