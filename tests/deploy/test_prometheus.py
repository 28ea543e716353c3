"""Prometheus config, alert rules and the Grafana dashboard against the code:

- promtool (Debian's `prometheus` package; `make sysdeps` installs it) checks the config and the
  rules and runs the rules' unit tests (deploy/prometheus/alerts_test.yml);
- every metric the dashboard and the alerts name is one the code exports (hyv/service/metrics.py's
  metrics and Redis-state collector; the worker exporter's process_* metrics; Prometheus' `up`),
  with the labels they match on;
- the live stack (tests/deploy/conftest.py) exports every one of them after a real job, the API's
  /metrics and the worker's exporter each the ones they should;
- a real Prometheus with a copy of deploy/prometheus/prometheus.yml (targets pointed at the live
  stack, intervals shortened) scrapes them: `hyv_jobs_finished_total` returns the job the test
  ran, every dashboard query parses, and every alert rule evaluates without error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.common import (
    DEPLOY,
    load_yaml,
    promql_grouping_labels,
    promql_metrics,
    promql_selector_labels,
)
from tests.deploy.conftest import MODEL, Stack, free_port, stop_group, wait_until

PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "hyv.json"
# Series Prometheus itself attaches or makes: the target labels, and `up` for every target.
TARGET_LABELS = {"job", "instance"}
# Worker-side metrics (the exporter); the rest come from the API (its own counters + Redis state).
WORKER_METRICS = {
    "hyv_jobs_finished_total",
    "hyv_job_queue_wait_seconds",
    "hyv_job_stage_seconds",
    "hyv_denoise_step_seconds",
    "hyv_time_to_first_byte_seconds",
}

# Series only a GPU worker reports (the test stacks run on the CPU).
GPU_ONLY_METRICS = {"hyv_gpu_memory_bytes"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed: apt-get install prometheus (make sysdeps does)")
    return path


# --- what the code exports --------------------------------------------------------------------------


class _FakeStore:
    """Just enough of JobStore for RedisStateCollector.collect() to name its metrics."""

    def queue_depth(self, model: str) -> int:
        return 0

    def workers(self, model: str | None = None) -> list[dict[str, Any]]:
        memory = {"allocated": 1.0, "process_rss": 2.0}
        return [{"hostname": "h:1", "ready": True, "busy_job": "j", "memory": memory}]


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, for every series the code can export."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from hyv.service import metrics

    found: dict[str, set[str]] = {}
    for value in metrics.all_metrics():
        (family,) = value.describe()
        labels = set(value._labelnames)
        if family.type == "counter":
            found[family.name + "_total"] = labels
        elif family.type == "histogram":
            found[family.name + "_bucket"] = labels | {"le"}
            found[family.name + "_sum"] = labels
            found[family.name + "_count"] = labels
        else:
            found[family.name] = labels
    for family in metrics.RedisStateCollector(_FakeStore(), ["m"]).collect():  # type: ignore[arg-type]
        for sample in family.samples:
            found[sample.name] = set(sample.labels)
    # hyv/service/metrics_exporter.py adds the exporter's process metrics (worker restarts).
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    for family in registry.collect():
        for sample in family.samples:
            found[sample.name] = set(sample.labels)
    found["up"] = set()
    return {name: labels | TARGET_LABELS for name, labels in found.items()}


def alert_expressions() -> dict[str, str]:
    groups = load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} [{target['refId']}]": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }


def all_expressions() -> dict[str, str]:
    return {**{f"alert {k}": v for k, v in alert_expressions().items()}, **dashboard_expressions()}


def referenced_metrics() -> set[str]:
    names: set[str] = set()
    for expr in all_expressions().values():
        names |= promql_metrics(expr)
    return names


def family(sample_name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


# --- static checks ----------------------------------------------------------------------------------


def test_promtool_check_config_and_rules() -> None:
    tool = promtool()
    for args in (
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
        ["test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml")],
    ):
        result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def test_every_alert_has_a_unit_test() -> None:
    tests = load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(alert_expressions()), "each alert is shown to fire in alerts_test.yml"


def test_the_issue_asks_for_these_alerts_and_panels() -> None:
    alerts = set(alert_expressions())
    assert {"HyvQueueGrowing", "HyvNoReadyWorkers", "HyvJobErrorRateHigh", "HyvJobLatencyAboveSLO"} <= alerts
    assert {"HyvWorkerRestarts"} <= alerts
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for needed in (
        "Queue depth",
        "Queue wait percentiles",
        "Job latency percentiles",
        "Throughput",
        "Denoise step time",
        "Time to first byte",
        "Job error rate",
        "GPU memory",
        "Workers ready",
    ):
        assert needed in titles, needed


def test_every_metric_named_is_exported_by_the_code() -> None:
    exported = exported_series()
    for where, expr in all_expressions().items():
        names = promql_metrics(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - set(exported)
        assert not unknown, f"{where}: {sorted(unknown)} are not exported (known: {sorted(exported)})"
        for metric, labels in promql_selector_labels(expr):
            assert labels <= exported[metric], (
                f"{where}: {metric} has no label {sorted(labels - exported[metric])}"
            )
        available = set().union(*(exported[name] for name in names))
        grouping = promql_grouping_labels(expr)
        assert grouping <= available, (
            f"{where}: groups by {sorted(grouping - available)}, which no series has"
        )


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ][0]
    assert variable["type"] == "datasource" and variable["current"]["value"] == datasource["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


# --- the live stack ---------------------------------------------------------------------------------


def samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, from the Prometheus text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def sample_names(text: str) -> set[str]:
    return {key.split("{", 1)[0] for key in samples(text)}


@pytest.mark.timeout(400)
def test_live_metrics_after_a_job(stack: Stack) -> None:
    api = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
    worker = httpx.get(stack.worker_metrics_url, timeout=10).text
    assert stack.job is not None
    finished = f'hyv_jobs_finished_total{{model="{MODEL}",status="completed"}}'
    assert samples(worker)[finished] == 1.0, "the worker's exporter counts the job it ran"
    assert finished not in samples(api), "the API's folder holds only the API's own counters"
    assert samples(api)[f'hyv_jobs_submitted_total{{mode="t2v",model="{MODEL}"}}'] == 1.0
    assert samples(api)["hyv_workers_ready"] >= 1
    assert samples(worker)["hyv_denoise_step_seconds_count"] >= 2
    assert samples(worker)["process_start_time_seconds"] > 0, "the exporter's own start time"
    for name in WORKER_METRICS:
        assert any(family(n) == name for n in sample_names(worker)), name
    assert samples(api)["process_start_time_seconds"] > 0, "the API process's own start time"
    # The stack's worker runs on the CPU: the GPU memory gauge is exported without samples.
    assert "# TYPE hyv_gpu_memory_bytes gauge" in api
    assert not any(name.startswith("hyv_gpu_memory_bytes") for name in samples(api))
    live = sample_names(api) | sample_names(worker) | {"up"} | GPU_ONLY_METRICS
    missing = {name for name in referenced_metrics() if name not in live}
    assert not missing, f"named in the dashboard/alerts but not scraped after a job: {sorted(missing)}"


@pytest.mark.timeout(120)
def test_health_checks_against_the_live_stack(stack: Stack) -> None:
    import sys

    def run(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hyv.service.healthcheck", role],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run("api", stack.api_env).returncode == 0
    assert run("worker", stack.worker_env).returncode == 0  # the worker runs on this host
    down = run("api", {**stack.api_env, "HYV_PORT": str(free_port())})
    assert down.returncode == 1 and "unhealthy" in down.stderr
    elsewhere = run("worker", {**stack.worker_env, "HYV_REDIS_URL": stack.redis_url.rsplit("/", 1)[0] + "/9"})
    assert elsewhere.returncode == 1 and "no worker" in elsewhere.stderr


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on a free port, with the project's scrape config and rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed: apt-get install prometheus (make sysdeps does)")
    folder = tmp_path_factory.mktemp("prometheus")
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", folder / "alerts.yml")
    shutil.copytree(PROMETHEUS_DIR / "targets", folder / "targets")
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    port = free_port()
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["hyv-api"]["static_configs"] = [{"targets": [f"127.0.0.1:{stack.api_port}"]}]
    # The compose network's DNS name does not exist here: the one worker, by address.
    jobs["hyv-worker"].pop("dns_sd_configs")
    jobs["hyv-worker"]["static_configs"] = [{"targets": [f"127.0.0.1:{stack.worker_metrics_port}"]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = (folder / "prometheus.log").open("ab")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError((folder / "prometheus.log").read_text()[-3000:])
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 60, "prometheus ready")
        yield url
    finally:
        stop_group(process)
        log.close()


def query(url: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]


@pytest.mark.timeout(300)
def test_prometheus_scrapes_the_job(prometheus: str, stack: Stack) -> None:
    expr = f'hyv_jobs_finished_total{{model="{MODEL}",status="completed"}}'

    def found() -> list[dict[str, Any]]:
        return [r for r in query(prometheus, expr)["result"] if float(r["value"][1]) >= 1]

    (series,) = wait_until(found, 60, f"{expr} in Prometheus")
    assert series["metric"]["job"] == "hyv-worker"
    assert float(series["value"][1]) == 1.0

    def health() -> dict[str, str]:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    expected = {"hyv-api": "up", "hyv-worker": "up", "prometheus": "up"}
    wait_until(lambda: health() == expected, 30, "every scrape target up")
    (ready,) = query(prometheus, "max(hyv_workers_ready)")["result"]
    assert float(ready["value"][1]) >= 1


@pytest.mark.timeout(300)
def test_dashboard_queries_and_rules_run_in_prometheus(prometheus: str, stack: Stack) -> None:
    wait_until(lambda: query(prometheus, "hyv_denoise_step_seconds_count")["result"], 60, "worker series")
    for expr in dashboard_expressions().values():
        query(prometheus, expr.replace("$__rate_interval", "1m"))  # parses and evaluates
    time.sleep(3)  # a few rule evaluations (evaluation_interval 1s)
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == set(alert_expressions())
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    # A healthy stack raises no alert (HyvWorkerProcessChurn needs > 2 vanished workers, etc.).
    firing = [r["name"] for r in rules.values() if r["state"] == "firing"]
    assert not firing, firing


def test_exporter_metric_names_cover_the_worker_side() -> None:
    """The worker metrics named by the alerts are among what hyv/service/metrics.py defines for workers."""
    exported = {family(name) for name in exported_series()}
    assert {name.removesuffix("_total") for name in WORKER_METRICS} <= {
        n.removesuffix("_total") for n in exported
    }
