// Shared by the k6 scripts of bench/k6 (bench/README.md, "k6"): the target, the token, the
// accounts, one gRPC connection per VU through server reflection, and the funding of the
// accounts in setup().
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { check } from 'k6';

export const TARGET = __ENV.TARGET || '127.0.0.1:50051';
export const ACCOUNTS = parseInt(__ENV.ACCOUNTS || '1000', 10);
const VUS = __ENV.VUS ? parseInt(__ENV.VUS, 10) : null;
export const DURATION = __ENV.DURATION || '30s';
export const PREFIX = __ENV.ACCOUNT_PREFIX || 'k6-';
const TOKEN = __ENV.TOKEN || '';
export const PARAMS = { metadata: TOKEN ? { authorization: `Bearer ${TOKEN}` } : {}, timeout: '10s' };
export const SERVICE = 'credits.v1.CreditsService';

// The load: VUS (default `vus`) each with one call in flight, for DURATION; thresholds every
// script keeps: checks above 99.9 %, and the load's calls (not setup's) within p95 and p99
export function options(p95Ms, p99Ms, vus = 64) {
  return {
    scenarios: { load: { executor: 'constant-vus', vus: VUS || vus, duration: DURATION } },
    thresholds: {
      checks: ['rate>0.999'],
      'grpc_req_duration{scenario:load}': [`p(95)<${p95Ms}`, `p(99)<${p99Ms}`],
    },
    summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
  };
}

const client = new grpc.Client();
let connected = false;

// The VU's connection, made on its first iteration (k6 allows no connect in the init context)
export function connection() {
  if (!connected) {
    client.connect(TARGET, { plaintext: !__ENV.TLS, reflect: true, timeout: '10s' });
    connected = true;
  }
  return client;
}

export function ok(response, what) {
  return check(response, { [`${what} OK`]: (r) => r && r.status === grpc.StatusOK });
}

export function account() {
  return `${PREFIX}${Math.floor(Math.random() * ACCOUNTS)}`;
}

// A fresh idempotency key per call: the VU, its iteration and a random tail
export function key(what) {
  return `k6-${what}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}-${Math.random().toString(36).slice(2)}`;
}

// setup(): credit every account the run uses (idempotent: the same key on every run, so a
// second run adds nothing); needs an admin token when authentication is on
export function fund() {
  const funder = new grpc.Client();
  funder.connect(TARGET, { plaintext: !__ENV.TLS, reflect: true, timeout: '10s' });
  const credits = parseInt(__ENV.FUND_CREDITS || '1000000000', 10);
  for (let i = 0; i < ACCOUNTS; i++) {
    const response = funder.invoke(`${SERVICE}/Grant`, {
      account_id: `${PREFIX}${i}`, amount: credits, type: 'GRANT_TYPE_ADMIN_GRANT',
      idempotency_key: `k6-fund-${PREFIX}${i}-${credits}`,
    }, PARAMS);
    if (!response || response.status !== grpc.StatusOK) {
      throw new Error(`funding ${PREFIX}${i} failed: ${JSON.stringify(response && response.error)}`);
    }
  }
  funder.close();
}
