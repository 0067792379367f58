"""Persistence: SQLAlchemy 2 async on asyncpg, repositories, migrations, embedded Postgres."""
