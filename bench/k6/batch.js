// BatchCheckAndReserve of BATCH_SIZE (100) holds of 1 credit on random funded accounts; an
// item's error counts against the checks as a failed call does.
//   k6 run bench/k6/batch.js     (TARGET, TOKEN, ACCOUNTS, VUS, DURATION, BATCH_SIZE)
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { account, connection, fund, key, ok, options as base, PARAMS, SERVICE } from './lib.js';

const BATCH_SIZE = parseInt(__ENV.BATCH_SIZE || '100', 10);
const items = new Counter('batch_items');
export const options = base(1000, 1500, 16);  // 16 calls of 100 in flight, as ghz's config

export function setup() {
  fund();
}

export default function () {
  const batch = [];
  for (let i = 0; i < BATCH_SIZE; i++) {
    batch.push({ account_id: account(), amount: 1, idempotency_key: key(`batch${i}`), ttl: '60s' });
  }
  const response = connection().invoke(`${SERVICE}/BatchCheckAndReserve`, { items: batch }, PARAMS);
  if (ok(response, 'BatchCheckAndReserve')) {
    const failed = response.message.results.filter((r) => r.error).length;
    check(failed, { 'every item held': (n) => n === 0 });
    items.add(BATCH_SIZE - failed);
  }
}
