// The metered call: CheckAndReserve of 1 credit, then Commit of that reservation (ghz cannot
// chain the two; k6 can). grpc_req_duration covers each call; cycle_duration the pair.
//   k6 run bench/k6/cycle.js     (TARGET, TOKEN, ACCOUNTS, VUS, DURATION: bench/README.md, "k6")
import { Trend } from 'k6/metrics';
import { account, connection, fund, key, ok, options as base, PARAMS, SERVICE } from './lib.js';

const cycle = new Trend('cycle_duration', true);
export const options = base(100, 200);
options.thresholds.cycle_duration = ['p(99)<300'];

export function setup() {
  fund();
}

export default function () {
  const client = connection();
  const started = Date.now();
  const held = client.invoke(`${SERVICE}/CheckAndReserve`, {
    account_id: account(), amount: 1, idempotency_key: key('cycle'), ttl: '60s',
  }, PARAMS);
  if (!ok(held, 'CheckAndReserve')) {
    return;
  }
  const committed = client.invoke(`${SERVICE}/Commit`, {
    reservation_id: held.message.reservation.reservationId,
  }, PARAMS);
  if (ok(committed, 'Commit')) {
    cycle.add(Date.now() - started);
  }
}
