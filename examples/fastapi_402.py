"""A FastAPI endpoint that answers 402 Payment Required when the account cannot pay, from the
client's typed InsufficientCredits (pip install fastapi uvicorn; not a dependency of the
client or the service).

    PYTHONPATH=client uvicorn examples.fastapi_402:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException

from credits_client import AccountFrozen, CreditsClient, InsufficientCredits

client: CreditsClient | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global client
    async with CreditsClient(os.environ.get("CREDITS_TARGET", "localhost:50051"),
                             token=os.environ.get("CREDITS_TOKEN")) as connected:
        client = connected
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/images")
async def generate_image(user_id: str, prompt: str) -> dict[str, str]:
    assert client is not None
    try:
        async with client.hold(user_id, feature="image", units=1):
            url = f"https://images.example.com/{abs(hash(prompt))}.png"  # the real work
    except InsufficientCredits as short:
        raise HTTPException(status_code=402, detail={
            "error": "insufficient_credits", "available": short.available,
            "needed": short.needed}) from None
    except AccountFrozen:
        raise HTTPException(status_code=403, detail={"error": "account_frozen"}) from None
    return {"url": url}
