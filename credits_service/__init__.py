"""credits-service: an async gRPC service that keeps a Postgres ledger of credits."""

import os

# The embedded PostgreSQL is started and stopped with subprocesses run as another user, which
# fork this (threaded) process. grpc's fork handlers then crash some of those children while
# calls are in flight (seen as SIGSEGV in pg_ctl). We never fork to run gRPC in a child, so
# turn them off; this must happen before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
