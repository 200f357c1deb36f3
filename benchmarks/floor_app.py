"""The floor of `benchmarks/serve.py`: a bare FastAPI route under uvicorn that reads
the request body and returns a constant JSON answer of the size a model server's
answer has, with no model, no batcher, no log and no metrics. Whatever a model
server spends above it is its own cost.

    .venv/bin/python benchmarks/floor_app.py PORT ANSWER_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


def create_app(answer: bytes) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


if __name__ == "__main__":
    port, answer_file = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(create_app(answer_file.read_bytes()), host="127.0.0.1", port=port, log_level="warning")
