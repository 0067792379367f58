"""Idempotency keys are kept for the retention period, then purged by the sweeper."""

from __future__ import annotations

from credits.v1 import credits_pb2 as pb
from credits_service.app import Application


async def test_keys_older_than_retention_are_purged_and_younger_ones_kept(
    app: Application, stub, db
):
    for key in ("old", "young"):
        await stub.Grant(pb.GrantRequest(account_id="keep", amount=1, idempotency_key=key,
                                         type=pb.GRANT_TYPE_PROMO))
    retention_s = app.settings.workers.idempotency_retention_s
    await db.execute(
        "UPDATE idempotency_keys SET create_time = now() - $1 * interval '1 second' "
        "WHERE idempotency_key = 'old'",
        retention_s + 1,
    )

    purged = await app.sweeper.purge_once()

    assert purged == 1
    assert await db.fetchval("SELECT array_agg(idempotency_key) FROM idempotency_keys") == [
        "young"
    ]
    # A purged key is a new operation again; a kept one still replays.
    again = await stub.Grant(pb.GrantRequest(account_id="keep", amount=1, idempotency_key="old",
                                             type=pb.GRANT_TYPE_PROMO))
    assert again.balance.balance == 3
    replay = await stub.Grant(pb.GrantRequest(account_id="keep", amount=1,
                                              idempotency_key="young", type=pb.GRANT_TYPE_PROMO))
    assert replay.balance.balance == 2
