"""The baseline for the ingest benchmark: a bare FastAPI endpoint that stores each message with one insert.

POST /ingest: read the body, parse the JSON (the gateway must too), insert one row
(message id, receipt time, raw bytes) and commit, then answer 201. Same engine set-up as the
gateway (gateway.platform.store.db.make_engine: the same SQLite pragmas, the same PostgreSQL pool) and
served the same way (uvicorn, same workers), so the ratio measures the gateway's own work.
Run by bench/ingest.py: `uvicorn bench.bare_app:create_app --factory` with DATABASE_URL set.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table, insert
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from gateway.platform.store.db import make_engine

metadata = MetaData()
messages = Table(
    "bench_messages",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False, unique=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("raw", LargeBinary, nullable=False),
)


def create_app() -> FastAPI:
    engine = make_engine(os.environ["DATABASE_URL"])
    app = FastAPI()

    def store(raw: bytes) -> str:
        message_id = str(json.loads(raw)["case_id"])
        with engine.begin() as connection:
            connection.execute(insert(messages).values(message_id=message_id, received_at=datetime.now(UTC), raw=raw))
        return message_id

    @app.post("/ingest", status_code=201)
    async def ingest(request: Request) -> Response:
        message_id = await run_in_threadpool(store, await request.body())
        return JSONResponse({"stored": message_id}, status_code=201)

    @app.get("/healthz")
    def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    return app
