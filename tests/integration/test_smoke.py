from credits.v1 import credits_pb2 as pb


async def test_grant_then_balance(stub):
    response = await stub.Grant(
        pb.GrantRequest(account_id="a1", amount=10, type=pb.GRANT_TYPE_SIGNUP, idempotency_key="k1")
    )
    assert response.balance.balance == 10
    balance = await stub.GetBalance(pb.GetBalanceRequest(account_id="a1"))
    assert balance.balance.available == 10
