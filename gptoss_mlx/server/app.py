"""The ASGI app: routes, error handlers and the generation queue around one `ServerEngine`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import builtin, chat_completions, responses, sse
from .engine import ServerEngine
from .errors import ApiError, error_body
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware
from .response_store import ResponseStore
from .schemas import ChatRequest, ResponsesRequest
from .worker import GenerationQueue, Job

log = logging.getLogger("gptoss.server")

DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_BODY = 32 << 20


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {err.get('msg')}"
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, _validation_message(exc)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        message = f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse(error_body(500, message, code="server_error"), status_code=500)


async def _unless_disconnected(request: Request, job: Job, work: Any) -> Any:
    """Await `work`; a client that goes away meanwhile cancels the job."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)
        job.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    finally:
        watcher.cancel()


def _streaming(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=sse.SSE_HEADERS)


def create_app(
    engine: ServerEngine,
    *,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_body: int = DEFAULT_MAX_BODY,
    builtin_tools: Mapping[str, Any] | None = None,
    store_size: int = 256,
    queue: GenerationQueue | None = None,
) -> Any:
    """The ASGI application serving `engine`. `builtin_tools`: the built-in tools of the
    Responses API by namespace ("python", "browser"), each a tools.base.Tool shared by all
    requests or a factory called per response (see server.builtin); the shared ones are closed
    at shutdown. Pass the `queue` whose thread loaded the model (GenerationQueue.call); else one
    is made here."""
    queue = queue or GenerationQueue(max_queue)
    store = ResponseStore(store_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        builtin.close_all(app.state.builtin_tools)

    app = FastAPI(title="gptoss-mlx", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.queue = queue
    app.state.builtin_tools = dict(builtin_tools or {})
    _install_error_handlers(app)
    _add_info_routes(app, engine, queue)
    _add_generation_routes(app, engine, queue, store)
    return BodyLimitMiddleware(ApiKeyMiddleware(app, api_key), max_body)


def _add_info_routes(app: FastAPI, engine: ServerEngine, queue: GenerationQueue) -> None:
    started = int(time.time())

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started, "owned_by": "gptoss-mlx"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model_id, "waiting": queue.waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(engine.model_id)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        engine.check_model(name)
        return model_card(name)

    # ollama-style probes that `codex --oss` and some editors make before using /v1
    @app.get("/api/version")
    async def version() -> dict[str, Any]:
        return {"version": "0.12.0"}

    @app.get("/api/tags")
    async def tags() -> dict[str, Any]:
        names = [engine.model_id, *engine.aliases]
        return {"models": [{"name": n, "model": n, "modified_at": "", "size": 0} for n in names]}

    @app.post("/api/pull")
    async def pull(request: Request) -> Any:
        body = await request.json()
        engine.check_model(body.get("model") or body.get("name"))
        return StreamingResponse(
            iter(['{"status":"success"}\n']), media_type="application/x-ndjson"
        )


def _add_generation_routes(
    app: FastAPI, engine: ServerEngine, queue: GenerationQueue, store: ResponseStore
) -> None:
    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Any:
        engine.check_model(req.model)
        gen = chat_completions.to_generation(req, engine)
        job = queue.submit(lambda cancelled: engine.run(gen, cancelled))
        if req.stream:
            return _streaming(chat_completions.stream(job, req, engine.model_id))
        work = chat_completions.complete(job, req, engine.model_id)
        return await _unless_disconnected(request, job, work)

    @app.post("/v1/responses")
    async def respond(req: ResponsesRequest, request: Request) -> Any:
        engine.check_model(req.model)
        history = store.get(req.previous_response_id) if req.previous_response_id else []
        available = app.state.builtin_tools
        gen, items = responses.to_generation(req, engine, history, available)
        try:
            job = queue.submit(lambda cancelled: engine.run(gen, cancelled))
        except ApiError:
            builtin.close_fresh(gen.builtin, available)
            raise
        builder = responses.ResponseBuilder(
            req, engine.model_id, browser=gen.builtin.get("browser")
        )

        def remember() -> None:
            if req.store and builder.status in ("completed", "incomplete"):
                store.put(builder.id, items + builder.output)

        if req.stream:

            async def body() -> AsyncIterator[str]:
                try:
                    async for frame in responses.stream(job, builder):
                        yield frame
                    remember()
                finally:
                    builtin.close_fresh(gen.builtin, available)

            return _streaming(body())
        try:
            result = await _unless_disconnected(request, job, responses.complete(job, builder))
        finally:
            builtin.close_fresh(gen.builtin, available)
        remember()
        return result
