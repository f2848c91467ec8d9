"""Alembic environment: runs on the connection the gateway hands it (gateway.platform.store.db.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from gateway.platform.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` CLI use: take the URL from the config / DATABASE_URL
    import os

    url = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url") or "sqlite:///iap-gateway.db"
    with create_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
