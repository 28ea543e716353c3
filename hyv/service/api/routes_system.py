"""GET /v1/models, /healthz, /readyz, /metrics."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from hyv.service import metrics
from hyv.service.api.auth import CallerDep, KeyRing
from hyv.service.api.context import AppContext, ContextDep
from hyv.service.api.errors import APIError, NotFoundError
from hyv.service.api.schemas import ModelList, ModelPublic, error_responses
from hyv.service.worker_registry import ready_for, serves

logger = logging.getLogger(__name__)

router = APIRouter()


@router.get(
    "/v1/models",
    response_model=ModelList,
    tags=["models"],
    summary="The served models (the default first): defaults, limits, sizes and lengths, guidance, "
    "vocabulary and grammar",
    responses=error_responses(401),
)
async def list_models(caller: CallerDep, context: ContextDep) -> ModelList:
    return ModelList(data=[model.public() for model in context.models])


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelPublic,
    tags=["models"],
    summary="One model",
    responses=error_responses(401, 404),
)
async def get_model(model_id: str, caller: CallerDep, context: ContextDep) -> ModelPublic:
    model = context.models.find(model_id)
    if model is None:
        raise NotFoundError(
            f"no model {model_id!r}; the served models are {context.models.names}", "model_not_found"
        )
    return model.public()


LOAD_ERROR_CHARS = 500

PUBLIC: dict[str, Any] = {
    "security": []
}  # the health routes need no API key (probes and Prometheus scrape them)


@router.get("/healthz", tags=["health"], summary="Liveness: the API process answers", openapi_extra=PUBLIC)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    summary="Readiness: Redis answers and a worker has the model loaded (each model, when several)",
    description=(
        "Without an API key: the status and counts only. With a valid key (or on a server without"
        " keys, which listens on loopback only): also the model, which worker failed to load it and"
        " why, with file paths cut to their last part. Serving several models: `ready` (200) when"
        " every model has a worker with it loaded, `degraded` (200) when some have, `unavailable`"
        " (503) when none has; with details, `models` has each model's own readiness and"
        " `models_not_ready` names the others."
    ),
    responses={503: {"description": "Not ready: the body says why"}},
    openapi_extra=PUBLIC,
)
async def readyz(request: Request, context: ContextDep) -> JSONResponse:
    detailed = _sees_details(context.keyring, request.headers.get("authorization"))
    try:
        context.redis.ping()
    except Exception as exc:
        logger.warning("readyz: redis unreachable: %s", exc)
        reason = f"redis unreachable: {redact_paths(str(exc))}" if detailed else "redis unreachable"
        return JSONResponse({"status": "unavailable", "reason": reason}, 503)
    workers = context.workers.live()
    if len(context.models) == 1:
        single = _model_readiness(context, context.model.name, workers, detailed)
        return JSONResponse(single, 200 if single["status"] == "ready" else 503)
    per_model = {model.name: _model_readiness(context, model.name, workers, True) for model in context.models}
    not_ready = [name for name, entry in per_model.items() if entry["status"] != "ready"]
    status = "ready" if not not_ready else "degraded" if len(not_ready) < len(per_model) else "unavailable"
    serving = [w for w in workers if any(name in serves(w) for name in per_model)]
    body: dict[str, Any] = {
        "status": status,
        "workers": len(serving),
        "workers_ready": sum(1 for w in serving if any(ready_for(w, name) for name in per_model)),
        "queue_depth": sum(entry["queue_depth"] for entry in per_model.values()),
        "models_ready": len(per_model) - len(not_ready),
        "models_total": len(per_model),
    }
    if detailed:
        body["models"] = per_model
        if not_ready:
            body["models_not_ready"] = not_ready
            body["reason"] = "; ".join(f"{name}: {per_model[name]['reason']}" for name in not_ready)
    elif not_ready:
        body["reason"] = f"{len(not_ready)} of {len(per_model)} models have no worker with them loaded"
    return JSONResponse(body, 503 if status == "unavailable" else 200)


def _model_readiness(
    context: AppContext, name: str, workers: list[dict[str, Any]], detailed: bool
) -> dict[str, Any]:
    """One model's readiness: ready when a live worker has it loaded; the load errors of the
    workers that failed to load it (details only)."""
    serving = [w for w in workers if name in serves(w)]
    ready = [w for w in serving if ready_for(w, name)]
    # Workers up whose model failed to load (their jobs stay queued): the error each one hit.
    failed = [
        {"worker": str(w.get("hostname")), "error": redact_paths(str(error))[:LOAD_ERROR_CHARS]}
        for w in serving
        if (error := serves(w)[name].get("load_error")) and not ready_for(w, name)
    ]
    body: dict[str, Any] = {
        "status": "ready" if ready else "unavailable",
        "workers": len(serving),
        "workers_ready": len(ready),
        "workers_failed": len(failed),
        "queue_depth": context.jobs.queue_depth(name),
    }
    if detailed:
        body["model"] = name
        if failed:
            body["load_errors"] = failed
    if not ready:
        model = repr(name) if detailed else "the model"
        if failed:
            body["reason"] = f"{len(failed)} worker(s) could not load {model}"
            if detailed:
                body["reason"] += f": {failed[0]['error']}"
        else:
            body["reason"] = f"no worker has loaded {model} yet" if serving else "no worker running"
    return body


def _sees_details(keyring: KeyRing, authorization: str | None) -> bool:
    """Whether /readyz may say which worker failed and why: to a caller with a valid key, or to
    anyone on a server without keys (it listens on loopback only: hyv.service.api.auth). Without
    a valid key the route still answers (probes send none), with the counts only."""
    if not keyring.enabled:
        return True
    try:
        keyring.authenticate(authorization)
    except APIError:
        return False
    return True


# An absolute POSIX path, or one under `~` (not a URL's path: no letter, digit, `.` or `/` before).
_PATH = re.compile(r"(?<![\w./~-])~?/(?:[^\s'\"(),;:/]+/)*([^\s'\"(),;:/]+)/?")


def redact_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part: `/srv/hyv/weights/dit/model.safetensors`
    -> `model.safetensors` (which file, not where the server keeps it)."""
    return _PATH.sub(r"\1", text)


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics (every process of the service)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    openapi_extra=PUBLIC,
)
async def prometheus_metrics(context: ContextDep) -> Response:
    data, content_type = metrics.render_metrics(
        context.jobs, context.workers, context.settings, context.models.names
    )
    return Response(data, media_type=content_type)
