"""Several models behind one API, through the real service: the tiny student and its teacher
(exported by hyv.training.teacher_export: 50 steps of true CFG) served by one deployment
(HYV_MODELS), one real Celery worker holding both and consuming both queues, the OpenAI SDK's
`model=` routing each job to its model's queue, the run log showing the model and the step count
each job was rendered with, /v1/models listing both with their limits, an unknown model refused
naming the served ones, and /readyz per model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from hyv.engine.bundle import init_random_bundle, save_bundle
from hyv.service.job_store import JobStore
from hyv.service.launcher import start_worker, stop_worker, wait_for_workers
from hyv.service.served_models import served_model_sources, worker_model_sources
from hyv.service.settings import Settings
from hyv.training.teacher_export import export_teacher
from tests.service.conftest import WORKER_READY_TIMEOUT_S, make_settings
from tests.service.conftest_api import KEY_A, auth

openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install openai)")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the SDK marks the Videos API deprecated
]

STUDENT, TEACHER = "hyv-tiny", "hyv-tiny-teacher"
DB = 62  # a Redis database of its own (tests/service/conftest.py: 16-63 are for separate clusters)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny student (2 steps, embedded guidance) and its teacher (50 steps, true CFG)."""
    root = tmp_path_factory.mktemp("models")
    bundle = init_random_bundle("tiny")
    limits = dataclasses.replace(bundle.spec.limits, max_frames=9)
    bundle.spec = dataclasses.replace(bundle.spec, limits=limits)
    student = save_bundle(bundle, root / STUDENT)
    teacher = export_teacher(student, student, root / TEACHER, share_with=student).directory
    return student, teacher


@pytest.fixture(scope="module")
def deployment(
    redis_server: Any, bundles: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Settings serving both models, and one worker holding both (what `hyv serve` starts)."""
    student, teacher = bundles
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    data = tmp_path_factory.mktemp("several-data")
    settings = make_settings(url, data, student, models=[str(student), f"{TEACHER}={teacher}"])
    process = start_worker(settings, "both", log_path=data / "worker.log")
    try:
        wait_for_workers(url, STUDENT, 1, WORKER_READY_TIMEOUT_S)
        wait_for_workers(url, TEACHER, 1, WORKER_READY_TIMEOUT_S)
        yield settings
    finally:
        stop_worker(process)


@pytest.fixture
def api(deployment: Settings, serve_app: Callable[[Any], Any]) -> str:
    return str(serve_app(deployment.model_copy(update={"api_keys": [KEY_A]})).url)


def test_the_configuration_names_and_orders_the_models(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    student, teacher = bundles
    base = Settings(weights=student, model_name="solo")
    assert [(s.name, s.weights) for s in served_model_sources(base)] == [("solo", student)]  # as before
    listed = base.model_copy(update={"models": [str(student), f"{TEACHER}={teacher}"]})
    assert [s.name for s in served_model_sources(listed)] == [STUDENT, TEACHER]  # bundle.json's name
    folder = Settings(models_dir=student.parent, model_name=TEACHER)  # the default first
    assert [s.name for s in served_model_sources(folder)] == [TEACHER, STUDENT]
    assert [
        s.queue for s in worker_model_sources(listed.model_copy(update={"worker_models": [TEACHER]}))
    ] == [f"hyv.{TEACHER}"]
    with pytest.raises(
        ValueError, match=r"not served here; the served models are \['hyv-tiny', 'hyv-tiny-teacher'\]"
    ):
        worker_model_sources(listed.model_copy(update={"worker_models": ["sdxl"]}))
    with pytest.raises(ValueError, match="'no-such-model' is not a bundled model"):
        served_model_sources(base.model_copy(update={"models": ["no-such-model"]}))
    with pytest.raises(ValueError, match="two served models are named 'hyv-tiny'"):
        served_model_sources(base.model_copy(update={"models": [str(student), str(student)]}))
    assert Settings(models="a, b").models == ["a", "b"]  # HYV_MODELS=a,b


def test_each_job_is_rendered_by_the_model_it_names(api: str, deployment: Settings) -> None:
    store = JobStore.from_url(deployment.redis_url or "")
    with openai.OpenAI(base_url=f"{api}/v1", api_key=KEY_A, max_retries=0) as client:
        listed = client.models.list().data
        assert [m.id for m in listed] == [STUDENT, TEACHER]
        limits = {m.id: m.model_extra for m in listed}
        assert limits[STUDENT]["defaults"]["steps"] == 2 and limits[TEACHER]["defaults"]["steps"] == 50
        assert (
            limits[STUDENT]["guidance_mode"] == "embedded" and limits[TEACHER]["guidance_mode"] == "true_cfg"
        )
        assert limits[TEACHER]["max_frames"] == limits[STUDENT]["max_frames"] == 9

        made = {
            name: client.videos.create(prompt="a red circle moving right", model=name, extra_body={"seed": 1})
            for name in (TEACHER, STUDENT)
        }
        default = client.videos.create(prompt="a red circle moving right", extra_body={"seed": 1})
        for video in (*made.values(), default):
            done = client.videos.poll(video.id, poll_interval_ms=100)
            assert done.status == "completed", done.error
        assert client.videos.retrieve(made[TEACHER].id).model == TEACHER
        assert client.videos.retrieve(default.id).model == STUDENT  # no `model`: the first one

    for video, model, steps in (
        (made[TEACHER], TEACHER, 50),
        (made[STUDENT], STUDENT, 2),
        (default, STUDENT, 2),
    ):
        record = client_record(api, video.id)
        assert (record["model"], record["steps"], record["guidance"]) == (model, steps, 6.0)
        (end,) = [entry for entry in store.claims.runs(video.id) if entry["event"] == "end"]
        # What the worker rendered it with: the pipeline of that model, its step count.
        assert end["outcome"] == "completed"
        assert end["rendered"] == {"model": model, "steps": steps, "guidance": 6.0}


def client_record(api: str, video_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{api}/v1/videos/{video_id}", headers=auth(KEY_A), timeout=10)
    assert answer.status_code == 200
    return dict(answer.json())


def test_an_unknown_model_is_refused_naming_the_served_ones(api: str) -> None:
    answer = httpx.post(
        f"{api}/v1/videos",
        json={"prompt": "a red circle", "model": "sora-2"},
        headers=auth(KEY_A),
        timeout=10,
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["param"] == "model" and error["code"] == "invalid_value"
    assert (
        error["message"]
        == "model 'sora-2' is not served here; the served models are ['hyv-tiny', 'hyv-tiny-teacher']"
    )
    one = httpx.get(f"{api}/v1/models/{TEACHER}", headers=auth(KEY_A), timeout=10)
    assert one.status_code == 200 and one.json()["fixed_steps"] is None
    missing = httpx.get(f"{api}/v1/models/sora-2", headers=auth(KEY_A), timeout=10)
    assert missing.status_code == 404 and "'hyv-tiny-teacher'" in missing.json()["error"]["message"]


def test_readyz_reports_each_model(
    api: str, deployment: Settings, bundles: tuple[Path, Path], serve_app: Callable[[Any], Any]
) -> None:
    both = httpx.get(f"{api}/readyz", headers=auth(KEY_A), timeout=10)
    assert both.status_code == 200
    body = both.json()
    assert body["status"] == "ready" and body["models_ready"] == body["models_total"] == 2
    assert body["models"][TEACHER]["status"] == "ready" and body["models"][TEACHER]["workers_ready"] == 1
    assert "models_not_ready" not in body

    # A third model nobody loads: the API still serves the other two (200, degraded) and names it.
    student, _ = bundles
    third = deployment.model_copy(
        update={"models": [*deployment.models, f"hyv-tiny-3={student}"], "api_keys": [KEY_A]}
    )
    server = serve_app(third)
    detailed = httpx.get(f"{server.url}/readyz", headers=auth(KEY_A), timeout=10).json()
    assert detailed["status"] == "degraded" and detailed["models_not_ready"] == ["hyv-tiny-3"]
    assert detailed["models"]["hyv-tiny-3"]["reason"] == "no worker running"
    assert detailed["reason"] == "hyv-tiny-3: no worker running"
    public = httpx.get(f"{server.url}/readyz", timeout=10)
    assert public.status_code == 200 and "hyv-tiny-3" not in public.text
    assert public.json()["reason"] == "1 of 3 models have no worker with them loaded"
