"""`hpcl4sr serve`: the recommender behind FastAPI (the `serve` extra), with a web page at /.

Endpoints (OpenAPI docs at /docs):
  GET  /health                              model name, catalogue size, index
  GET  /users/{user_id}/recommendations?n=  a known user's top-n (404 for an unknown user)
  POST /recommendations  {"history": [...], "n": 20}   top-n for a history of raw item ids
  GET  /items/{item_id}                     an item's category and interaction count (404 when unknown)
  GET  /users?limit=, GET /users/{user_id}/interests?n=, POST /interests   what the page shows
Errors are JSON {"error": ...}: 404 unknown ids, 422 malformed requests or n outside [1, 1000], 413 bodies
over 1 MB, 400 other bad input, 500 "internal error" without a traceback.

Recommendation requests are micro-batched: those that arrive while a forward pass runs are answered
together by the next one (`MicroBatcher`). On Ta-Feng a batch of 8 costs HPCL4SR about a quarter of 8
single passes (docs/performance.md, "Serving", has the measurements), and a lone request waits for
nothing: the batcher never delays a pass to collect more.
"""

import asyncio
import logging
from collections import defaultdict
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from hpcl4sr.errors import UserError
from hpcl4sr.serve.recommender import MAX_N, Recommendations, Recommender, UnknownId, load
from hpcl4sr.serve.recommender import Query as Resolved

MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("hpcl4sr.serve")


def import_serving():  # noqa: ANN201
    try:
        import fastapi
        import uvicorn
    except ImportError:
        raise UserError("serving needs FastAPI and uvicorn: pip install 'hpcl4sr[serve]'") from None
    return fastapi, uvicorn


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, by Content-Length or as it streams."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self.reject(send)
            return
        received, rejected = 0, False

        async def counting_receive() -> dict[str, Any]:
            # Past the limit: answer 413 now and tell the application the client left, so it stops reading.
            nonlocal received, rejected
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit and not rejected:
                rejected = True
                await self.reject(send)
            return {"type": "http.disconnect"} if rejected else message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not rejected:  # whatever the application answers after a 413 is dropped
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def reject(self, send: Any) -> None:
        body = b'{"error":"request body over 1 MB"}'
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class MicroBatcher:
    """Answers the recommendation requests pending at each turn of the event loop with one forward pass
    per list length n (up to `max_batch` requests)."""

    def __init__(self, recommender: Recommender, max_batch: int = 64) -> None:
        self.recommender, self.max_batch = recommender, max_batch
        self.pending: list[tuple[Resolved, int, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None

    async def recommend(self, query: Resolved, n: int) -> Recommendations:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((query, n, future))
        if self.worker is None:
            self.worker = asyncio.create_task(self.drain())
        return await future

    async def drain(self) -> None:
        try:
            while self.pending:
                await asyncio.sleep(0)  # let the handlers that are ready queue their requests too
                taken, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                by_n: dict[int, list[tuple[Resolved, asyncio.Future]]] = defaultdict(list)
                for query, n, future in taken:
                    by_n[n].append((query, future))
                for n, group in by_n.items():
                    try:
                        answers = self.recommender.recommend_queries([query for query, _ in group], n)
                    except Exception as err:  # noqa: BLE001  (each waiting request gets the error)
                        answers = [err] * len(group)
                    for (_, future), answer in zip(group, answers):
                        if not future.done():
                            (future.set_exception if isinstance(answer, Exception) else future.set_result)(answer)
        finally:
            self.worker = None


def create_app(recommender: Recommender) -> Any:
    """The FastAPI application over a loaded recommender."""
    fastapi, _ = import_serving()
    from fastapi import Body, Query
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    class HistoryRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[str | int] = Field(description="Raw item ids, oldest first.")
        n: int = Field(20, ge=1, le=MAX_N, description="How many items.")
        times: list[int] | None = Field(None, description="One time per history item (the dataset's unit).")

    app = fastapi.FastAPI(title="hpcl4sr", description="Multi-interest sequential recommendation.",
                          version=__import__("hpcl4sr").__version__)
    page = resources.files("hpcl4sr.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    count = Query(20, ge=1, le=MAX_N, description="How many items.")
    batcher = MicroBatcher(recommender)

    @app.exception_handler(UnknownId)
    async def unknown(_request: Any, err: UnknownId) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=404)

    @app.exception_handler(UserError)
    async def bad_input(_request: Any, err: UserError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, err: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in err.errors()]
        return JSONResponse({"error": "invalid request", "detail": details}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(_request: Any, err: Exception) -> JSONResponse:
        log.error("internal error: %r", err)  # the traceback stays out of the response
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": recommender.config.model_name, "items": recommender.data.catalogue.n_items,
                "users": len(recommender.data.user_ids), "max_len": recommender.max_len,
                "index": recommender.index.name if recommender.index is not None else "exact"}

    @app.get("/users")
    async def users(limit: int = Query(100, ge=1, le=10_000)) -> dict[str, list[str]]:
        return {"users": recommender.users(limit)}

    @app.get("/users/{user_id}/recommendations")
    async def user_recommendations(user_id: str, n: int = count) -> JSONResponse:
        answer = await batcher.recommend(recommender.query(user=user_id), n)
        return JSONResponse(answer.to_dict())

    @app.post("/recommendations")
    async def history_recommendations(request: HistoryRequest = Body(...)) -> JSONResponse:
        answer = await batcher.recommend(recommender.query(history=request.history, times=request.times), request.n)
        return JSONResponse(answer.to_dict())

    @app.get("/users/{user_id}/interests")
    async def user_interests(user_id: str, n: int = Query(10, ge=1, le=MAX_N)) -> dict[str, Any]:
        return {"interests": [asdict(found) for found in recommender.interests(user=user_id, n=n)]}

    @app.post("/interests")
    async def history_interests(request: HistoryRequest = Body(...)) -> dict[str, Any]:
        found = recommender.interests(history=request.history, n=request.n, times=request.times)
        return {"interests": [asdict(interest) for interest in found]}

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, Any]:
        return recommender.item(item_id)

    return BodyLimit(app)


def run_server(model: Path, host: str = "127.0.0.1", port: int = 8000, index: str = "exact",
               data: Path | None = None, threads: int = 1) -> None:
    """Load `model` (an export or a run directory) and serve it until interrupted.

    `threads` torch threads: one by default, since a batch-1 forward pass gains nothing from more and
    idle intra-op threads spinning beside the server's own work cost more than they bring.
    """
    import torch

    _, uvicorn = import_serving()
    torch.set_num_threads(threads)
    app = create_app(load(model, data=data, index=index))
    uvicorn.run(app, host=host, port=port, log_level="warning")
