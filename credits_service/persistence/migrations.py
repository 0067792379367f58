"""Apply Alembic migrations programmatically."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("credits_service.migrations")))
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Apply pending migrations. Blocking: call it from a thread inside an event loop."""
    command.upgrade(alembic_config(database_url), "head")


def upgrade_to(database_url: str, revision: str) -> None:
    """Apply migrations up to `revision` (tests of a migration start from the one before)."""
    command.upgrade(alembic_config(database_url), revision)
