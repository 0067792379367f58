// CheckAndReserve of 1 credit on a random funded account, a fresh idempotency key a call.
//   k6 run bench/k6/reserve.js   (TARGET, TOKEN, ACCOUNTS, VUS, DURATION: bench/README.md, "k6")
import { account, connection, fund, key, ok, options as base, PARAMS, SERVICE } from './lib.js';

export const options = base(100, 200);

export function setup() {
  fund();
}

export default function () {
  ok(connection().invoke(`${SERVICE}/CheckAndReserve`, {
    account_id: account(), amount: 1, idempotency_key: key('hold'), ttl: '60s',
  }, PARAMS), 'CheckAndReserve');
}
