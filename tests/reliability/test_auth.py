"""Auth: keys compared in constant time, never logged (a real `hyv serve` stack, every log line and
data file grepped), another key's job is a 404 on every endpoint, CORS closed unless configured."""

from __future__ import annotations

import ast
import inspect
import os
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hyv.service.api import auth as auth_module
from tests.reliability.conftest import VALID, error_of, make_reliability_settings
from tests.service.conftest_api import KEY_A, KEY_B, LiveServer, auth, free_port
from tests.service.serve_process import start_hyv_serve

pytestmark = pytest.mark.timeout(120)

JOB_ENDPOINTS = [
    ("GET", ""),
    ("GET", "/content"),
    ("GET", "/content?variant=thumbnail"),
    ("GET", "/events"),
    ("DELETE", ""),
]


# --- constant-time compare ----------------------------------------------------------------------


def _calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                names.add(f"{func.value.id}.{func.attr}")
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def test_keys_are_compared_in_constant_time() -> None:
    """KeyRing.authenticate compares with hmac/secrets.compare_digest, against every key (no early
    exit), and never with ==, != or `in` on the key material."""
    source = textwrap.dedent(inspect.getsource(auth_module.KeyRing.authenticate))
    tree = ast.parse(source)
    assert _calls(tree) & {"hmac.compare_digest", "secrets.compare_digest", "compare_digest"}
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For)]
    assert loops, "expected a loop over every configured key"
    for loop in loops:
        assert not any(isinstance(n, (ast.Break, ast.Return, ast.Raise)) for n in ast.walk(loop)), (
            "the key loop must not exit early (timing would tell which key prefix matched)"
        )
    secret_names = {"candidate", "token", "key", "authorization"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = {n.id for o in operands for n in ast.walk(o) if isinstance(n, ast.Name)}
            attrs = {n.attr for o in operands for n in ast.walk(o) if isinstance(n, ast.Attribute)}
            assert not (names & {"candidate", "key"} or "_keys" in attrs), ast.unparse(node)
            assert not (
                names & secret_names and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In)) for op in node.ops)
            ), ast.unparse(node)
    # Nothing else in the service compares keys: KeyRing is the one place that sees them.
    service = Path(auth_module.__file__).resolve().parents[1]
    for path in service.rglob("*.py"):
        text = path.read_text()
        assert "in settings.api_keys" not in text and "in self._keys:" not in text.replace(
            "for key in self._keys:", ""
        ), path


def test_keyring_behaviour() -> None:
    ring = auth_module.KeyRing([KEY_A, KEY_B])
    assert ring.authenticate(f"Bearer {KEY_A}").owner != ring.authenticate(f"bearer {KEY_B}").owner
    for header in (
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {KEY_A}",
        f"Bearer {KEY_A}x",
        f"Bearer {KEY_A[:-1]}",
        f"Bearer {KEY_A.upper()}",
        "Bearer \x00",
        f"{KEY_A}",
    ):
        with pytest.raises(auth_module.APIError) as raised:
            ring.authenticate(header)
        assert raised.value.status_code == 401
        assert KEY_A not in raised.value.message and KEY_B not in raised.value.message


def test_settings_never_show_secrets() -> None:
    from hyv.service.settings import Settings

    settings = Settings(api_keys=["sekrit-one", "sekrit-two"], webhook_secret="sekrit-hook")
    for text in (repr(settings), str(settings)):
        assert "sekrit" not in text


# --- keys never in logs: a real `hyv serve` ------------------------------------------------------

SECRET_A = "hyv-secret-alpha-3f9c1e77d2"
SECRET_B = "hyv-secret-bravo-8a41b0c95e"
WRONG = "hyv-wrong-charlie-11d0e5a6f3"


def _serve(data_dir: Path, bundle: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return start_hyv_serve(
        data_dir,
        bundle,
        port,
        log,
        HYV_API_KEYS=f"{SECRET_A},{SECRET_B}",
        HYV_LOG_LEVEL="DEBUG",  # the most the service ever logs
        HYV_RATE_LIMIT_PER_MINUTE="0",
    )


def _wait(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.2) -> Any:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_api_keys_never_reach_any_log_or_data_file(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = _serve(data, tiny_bundle_dir, port, log)
    try:
        _wait(lambda: _ready(base) or serve.poll() is not None, 120)
        assert serve.poll() is None, log.read_text()[-3000:]
        with httpx.Client(base_url=base, timeout=30) as client:
            # The happy path, to the end (the worker logs the job too).
            created = client.post("/v1/videos", json=VALID, headers=auth(SECRET_A))
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]

            def done() -> bool:
                status = client.get(f"/v1/videos/{job_id}", headers=auth(SECRET_A)).json()["status"]
                return status in ("completed", "failed")

            _wait(done, 90)
            assert client.get(f"/v1/videos/{job_id}/content", headers=auth(SECRET_A)).status_code == 200
            # Every way a key can arrive, right or wrong; each error path.
            attempts = [
                {"Authorization": f"Bearer {WRONG}"},
                {"Authorization": f"Basic {SECRET_A}"},
                {"Authorization": SECRET_B},
                {"Authorization": f"Bearer {SECRET_B}", "Idempotency-Key": "x" * 300},
                {"Authorization": f"Bearer {SECRET_B}", "Content-Type": "text/plain"},
                {"X-API-Key": SECRET_A},
            ]
            for headers in attempts:
                assert client.post("/v1/videos", json=VALID, headers=headers).status_code >= 400
                client.get(f"/v1/videos/{job_id}", headers=headers)
                client.get(f"/v1/videos?api_key={SECRET_A}", headers=headers)
            assert client.get(f"/v1/videos/{job_id}", headers=auth(SECRET_B)).status_code == 404
            # A key sent as a *prompt* by key B: refused (its words are outside the model's
            # vocabulary); the 422 names them to the sender only, and nothing stores or logs it.
            as_prompt = client.post("/v1/videos", json={"prompt": SECRET_A}, headers=auth(SECRET_B))
            assert as_prompt.status_code == 422, as_prompt.text
            assert as_prompt.json()["error"]["code"] == "prompt_outside_vocabulary"
            assert client.get("/metrics").status_code == 200
            client.delete(f"/v1/videos/{job_id}", headers=auth(SECRET_A))
        os.killpg(serve.pid, signal.SIGINT)
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)

    files = [log, *(p for p in data.rglob("*") if p.is_file())]
    texts = {path: path.read_bytes() for path in files}
    everything = b"".join(texts.values())
    assert job_id.encode() in everything  # the logs are there and do name the job
    assert b"warning" in texts[log] or b"info" in texts[log]
    for secret in (SECRET_A, SECRET_B, WRONG):
        leaked = [str(p) for p, text in texts.items() if secret.encode() in text]
        assert leaked == [], f"{secret} found in {leaked}"


# --- another key's job is a 404 everywhere ------------------------------------------------------


@pytest.fixture(scope="module")
def two_key_server(
    api_redis_url: str, tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    from hyv.service.api.app import create_app

    settings = make_reliability_settings(api_redis_url, tiny_bundle_dir, tmp_path_factory.mktemp("auth-data"))
    server = LiveServer(create_app(settings)).start()
    try:
        yield server
    finally:
        server.stop()


def _client(server: LiveServer, key: str | None) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=auth(key) if key else {}, timeout=30)


@pytest.mark.parametrize(("method", "suffix"), JOB_ENDPOINTS)
def test_another_keys_job_is_a_404_like_no_job(two_key_server: LiveServer, method: str, suffix: str) -> None:
    with _client(two_key_server, KEY_A) as alice, _client(two_key_server, KEY_B) as bob:
        job_id = alice.post("/v1/videos", json=VALID).json()["id"]
        missing = "video_" + "0" * 24
        path = suffix.split("?")
        theirs = bob.request(method, f"/v1/videos/{job_id}{suffix}")
        nobodys = bob.request(method, f"/v1/videos/{missing}{suffix}")
        assert theirs.status_code == nobodys.status_code == 404, (path, theirs.text)
        assert error_of(theirs)["code"] == error_of(nobodys)["code"]
        assert (
            theirs.json()["error"]["message"].replace(job_id, missing) == nobodys.json()["error"]["message"]
        )
        assert dict(theirs.headers).keys() == dict(nobodys.headers).keys()
        # ...and Alice's job is untouched.
        mine = alice.get(f"/v1/videos/{job_id}")
        assert mine.status_code == 200 and mine.json()["status"] == "queued"


def test_lists_and_idempotency_keys_are_per_key(two_key_server: LiveServer) -> None:
    with _client(two_key_server, KEY_A) as alice, _client(two_key_server, KEY_B) as bob:
        mine = alice.post("/v1/videos", json=VALID, headers={"Idempotency-Key": "shared-key"}).json()["id"]
        listed = bob.get("/v1/videos", params={"limit": 100}).json()["data"]
        assert mine not in [v["id"] for v in listed]
        # Bob with the same Idempotency-Key and body: his own new job, not a replay of Alice's.
        bobs = bob.post("/v1/videos", json=VALID, headers={"Idempotency-Key": "shared-key"})
        assert bobs.status_code == 201 and bobs.json()["id"] != mine
        # Bob paging "after" Alice's id learns nothing about it.
        after = bob.get("/v1/videos", params={"after": mine})
        assert after.status_code in (200, 404, 422)
        if after.status_code == 200:
            assert mine not in [v["id"] for v in after.json()["data"]]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY_A}"},
        {"Authorization": KEY_A},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {KEY_A} {KEY_B}"},
    ],
    ids=["none", "wrong", "basic", "no_scheme", "empty", "two_keys"],
)
def test_every_v1_route_needs_a_valid_key(two_key_server: LiveServer, headers: dict[str, str]) -> None:
    with _client(two_key_server, KEY_A) as alice:
        job_id = alice.post("/v1/videos", json=VALID).json()["id"]
    routes = [
        ("POST", "/v1/videos"),
        ("GET", "/v1/videos"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/hyv-tiny"),
    ]
    routes += [(method, f"/v1/videos/{job_id}{suffix}") for method, suffix in JOB_ENDPOINTS]
    with httpx.Client(base_url=two_key_server.url, headers=headers, timeout=30) as stranger:
        for method, path in routes:
            response = stranger.request(method, path, json=VALID if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert error_of(response)["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
            assert KEY_A not in response.text and KEY_B not in response.text
    with _client(two_key_server, KEY_A) as alice:
        assert alice.get(f"/v1/videos/{job_id}").json()["status"] == "queued"  # nothing was deleted


# --- CORS ---------------------------------------------------------------------------------------


def _preflight(client: httpx.Client, origin: str) -> httpx.Response:
    return client.options(
        "/v1/videos",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_cors_closed_by_default(two_key_server: LiveServer) -> None:
    with _client(two_key_server, KEY_A) as client:
        for origin in ("https://evil.example", "null", "http://127.0.0.1:1"):
            simple = client.get("/v1/videos", headers={"Origin": origin})
            assert simple.status_code == 200
            assert "access-control-allow-origin" not in simple.headers
            preflight = _preflight(client, origin)
            assert "access-control-allow-origin" not in preflight.headers
            assert preflight.status_code >= 400  # no CORS middleware: OPTIONS is not a route


def test_cors_open_only_to_configured_origins(
    api_redis_url: str, tiny_bundle_dir: Path, tmp_path: Path, serve_app: Callable[[Any], LiveServer]
) -> None:
    allowed = "https://app.example"
    settings = make_reliability_settings(
        api_redis_url, tiny_bundle_dir, tmp_path / "data", cors_origins=[allowed]
    )
    server = serve_app(settings)
    with _client(server, KEY_A) as client:
        ok = client.get("/v1/videos", headers={"Origin": allowed})
        assert ok.headers.get("access-control-allow-origin") == allowed
        preflight = _preflight(client, allowed)
        assert preflight.status_code == 200
        assert preflight.headers.get("access-control-allow-origin") == allowed
        assert "authorization" in preflight.headers.get("access-control-allow-headers", "").lower()
        for foreign in ("https://evil.example", "https://app.example.evil.example", "null"):
            response = client.get("/v1/videos", headers={"Origin": foreign})
            assert "access-control-allow-origin" not in response.headers, foreign
            refused = _preflight(client, foreign)
            assert refused.headers.get("access-control-allow-origin") in (None, ""), foreign
            assert refused.status_code == 400
