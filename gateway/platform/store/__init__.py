"""Storage: SQLAlchemy 2 models, named queries and Alembic migrations (SQLite default, PostgreSQL via DATABASE_URL)."""
