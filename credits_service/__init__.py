"""credits-service: an async gRPC service that keeps a Postgres ledger of credits."""
