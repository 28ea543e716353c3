"""The FastAPI application: `create_app(settings)`, or `create_app()` reading the environment
(`uvicorn --factory hyv.service.api.app:create_app`, which is what `hyv serve` runs)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from hyv.service import metrics
from hyv.service.api import content, routes_derived, routes_system, routes_unsupported, routes_videos, sse
from hyv.service.api.auth import KeyRing
from hyv.service.api.context import AppContext
from hyv.service.api.errors import install_error_handlers
from hyv.service.api.middleware import BodyLimitMiddleware, RequestMetricsMiddleware
from hyv.service.api.model_catalog import ModelCatalog
from hyv.service.api.openapi_docs import DESCRIPTION
from hyv.service.api.ratelimit import SubmissionLimiter
from hyv.service.api.schemas import VideoCreate
from hyv.service.job_store import JobStore
from hyv.service.settings import Settings, get_settings
from hyv.service.storage import make_storage

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.redis_url is None:
        raise ValueError(
            "HYV_REDIS_URL is not set: the API needs the Redis its workers use "
            "(`hyv serve` starts one and sets it)"
        )
    metrics.setup_metrics(settings)  # `uvicorn --factory` starts here (`hyv serve` did it already)
    redis_client = redis.Redis.from_url(settings.redis_url)
    models = ModelCatalog.from_settings(settings)  # ValueError naming a bad HYV_MODELS entry
    store = JobStore.connect(redis_client, settings)
    context = AppContext(
        settings=settings,
        redis=redis_client,
        jobs=store.jobs,
        cancels=store.cancels,
        idempotency=store.idempotency,
        workers=store.workers,
        events=store.events,
        storage=make_storage(settings),
        models=models,
        keyring=KeyRing(settings.api_keys),
        limiter=SubmissionLimiter(
            redis_client, settings.rate_limit_per_minute, settings.max_queued_jobs_per_key
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if context.keyring.enabled:
            logger.info("API keys: %d configured; every /v1 route needs one", len(settings.api_keys))
        else:
            logger.warning(
                "no API keys configured: no authentication, so the server must bind a loopback address "
                "only (set HYV_API_KEYS to serve other machines)"
            )
        # Everything loaded so far (FastAPI, pydantic, redis, celery: hundreds of
        # thousands of objects) lives as long as the process: keep it out of the cyclic GC, whose
        # full collections otherwise stall every request in flight for 100-300 ms under load.
        gc.freeze()
        yield
        gc.unfreeze()
        redis_client.close()

    app = FastAPI(
        title="hyvideo-serve",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "videos", "description": "Submit, watch, download, cancel and delete videos."},
            {"name": "models", "description": "What this server generates with."},
            {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
        ],
    )
    app.state.context = context
    app.state.keyring = context.keyring
    install_error_handlers(app)
    app.include_router(routes_videos.router)
    app.include_router(routes_derived.router)
    app.include_router(content.router)
    app.include_router(sse.router)
    app.include_router(routes_system.router)
    # Last of the /v1 routes: the parts of OpenAI's API this server does not offer (501).
    app.include_router(routes_unsupported.router)
    _mount_web(app)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            # Every method and request header the API reads, every response header of its own
            # that a page needs (ranged downloads, resuming a rendering video, retries).
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Range",
                "If-Range",
                "If-None-Match",
            ],
            expose_headers=[
                "Location",
                "Retry-After",
                "ETag",
                "Accept-Ranges",
                "Content-Range",
                "Content-Disposition",
                "X-Video-Status",
                "Idempotent-Replayed",
            ],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, record=metrics.observe_request)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _mount_web(app: FastAPI) -> None:
    index = WEB_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    # The page links web/favicon.svg; this is the same icon (16 and 32 px) for the clients that ask
    # for /favicon.ico by convention (bookmarks, link previews, browsers without SVG icons).
    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(
            WEB_DIR / "favicon.ico",
            media_type="image/vnd.microsoft.icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus `VideoCreate` (POST /v1/videos parses its body itself, to take both
    multipart and JSON, so FastAPI does not see the model)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    create = VideoCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(create.pop("$defs", {}))
    components["VideoCreate"] = create
    schema["components"]["securitySchemes"] = {"bearer_auth": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer_auth": []}]
    app.openapi_schema = schema
    return schema
