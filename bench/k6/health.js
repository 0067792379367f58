// The floor: the standard gRPC health Check, what every unary call sits on.
//   k6 run bench/k6/health.js    (TARGET, VUS, DURATION: bench/README.md, "k6")
import { connection, ok, options as base, PARAMS } from './lib.js';

export const options = base(50, 100);

export default function () {
  ok(connection().invoke('grpc.health.v1.Health/Check', {}, PARAMS), 'Check');
}
