"""Alembic migrations (installed as credits_service.migrations)."""
