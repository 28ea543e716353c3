"""`hyv serve` and `hyv worker` (registered in engine/cli.py):

    app.command("serve")(service.cli.serve)
    app.command("worker")(service.cli.worker)

Options override the HYV_* environment / .env settings (service.settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _settings(**overrides: Any) -> Any:
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (HYV_HOST; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (HYV_PORT; default 8000).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Videos, Redis data and metrics (HYV_DATA_DIR; default ./data).")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Model bundle (HYV_WEIGHTS).")] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes to start (one per GPU; 0 = API only, with HYV_REDIS_URL).")
    ] = 1,
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis instead of starting one (HYV_REDIS_URL).")
    ] = None,
) -> None:
    """Serve the video API: starts Redis (unless HYV_REDIS_URL), the workers and the API together."""
    from engine.bundle_spec import read_bundle_spec
    from service.launcher import serve as run_serve

    settings = _settings(host=host, port=port, data_dir=data_dir, weights=weights, redis_url=redis_url)
    try:
        spec = read_bundle_spec(settings.weights)
    except FileNotFoundError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if "model_name" not in settings.model_fields_set:
        settings = settings.model_copy(update={"model_name": spec.name})
    if workers < 0 or (workers == 0 and not settings.redis_url):
        raise typer.BadParameter(f"--workers must be >= 1 (or 0 with HYV_REDIS_URL), got {workers}")
    run_serve(settings, workers)


def worker(
    redis_url: Annotated[str | None, typer.Option(help="The API's Redis (HYV_REDIS_URL).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Model bundle (HYV_WEIGHTS).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Shared storage folder (HYV_DATA_DIR).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (HYV_DEVICE).")] = None,
    name: Annotated[str, typer.Option(help="Worker name (Celery hostname prefix).")] = "worker",
) -> None:
    """Run one GPU worker (production): takes jobs of the served model from Redis."""
    from engine.bundle_spec import read_bundle_spec
    from service.launcher import run_worker

    settings = _settings(redis_url=redis_url, weights=weights, data_dir=data_dir, device=device)
    if not settings.redis_url:
        raise typer.BadParameter("hyv worker needs --redis-url or HYV_REDIS_URL")
    try:
        spec = read_bundle_spec(settings.weights)
    except FileNotFoundError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if "model_name" not in settings.model_fields_set:
        settings = settings.model_copy(update={"model_name": spec.name})
    run_worker(settings, name)
