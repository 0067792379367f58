"""Service layer: use cases, transactions, idempotency. No protobuf, no SQLAlchemy."""
