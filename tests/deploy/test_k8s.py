"""deploy/k8s/*.yaml, parsed and checked against the code and against each other: environment,
commands, ports and selectors, the GPU limit, Redis persistence, shared storage, the
ServiceMonitors, the PrometheusRule (= deploy/prometheus/alerts.yml) and KEDA's queue name."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.common import (
    DEPLOY,
    allowed_env_names,
    check_command,
    check_hyv_command,
    load_yaml,
    load_yaml_all,
    option_value,
    settings_from_env,
    strip_init,
)

K8S = DEPLOY / "k8s"
IMAGE = "hyvideo-serve"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: {doc}"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def of_kind(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {name: doc for (k, name), doc in objects.items() if k == kind}


def workloads(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**of_kind(objects, "Deployment"), **of_kind(objects, "StatefulSet")}


def container(objects: dict[tuple[str, str], dict[str, Any]], workload: str) -> dict[str, Any]:
    (found,) = workloads(objects)[workload]["spec"]["template"]["spec"]["containers"]
    return found


def container_env(
    objects: dict[tuple[str, str], dict[str, Any]], spec: dict[str, Any]
) -> dict[str, str | None]:
    """Every variable the container gets: envFrom ConfigMaps, then env (None = from a Secret)."""
    env: dict[str, str | None] = {}
    for source in spec.get("envFrom", []):
        env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for item in spec.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def expand(value: str, env: dict[str, str | None], secrets: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Z_][A-Z0-9_]*)\)", lambda m: env.get(m.group(1)) or secrets[m.group(1)], value)


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    """The Secret's keys (secrets.env.example), with test values."""
    keys = [
        line.split("=", 1)[0]
        for line in (K8S / "secrets.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {key: f"test-{key.lower().replace('_', '-')}" for key in keys}


def test_kustomization_lists_every_file(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    (generator,) = kustomization["secretGenerator"]
    assert generator["envs"] == ["secrets.env"] and (K8S / "secrets.env.example").is_file()
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    assert ("Namespace", kustomization["namespace"]) in objects


def test_environment_is_read_by_the_code(
    objects: dict[tuple[str, str], dict[str, Any]], secrets: dict[str, str]
) -> None:
    allowed = allowed_env_names()
    for name in ("hyv-api", "hyv-worker"):
        spec = container(objects, name)
        assert spec["image"].startswith(IMAGE)
        env = container_env(objects, spec)
        unknown = set(env) - allowed - {"REDIS_PASSWORD"}
        assert not unknown, f"{name} sets {sorted(unknown)}: nothing reads them"
        # REDIS_PASSWORD exists only to build HYV_REDIS_URL (Kubernetes' $(VAR) expansion).
        assert "$(REDIS_PASSWORD)" in str(env["HYV_REDIS_URL"])
        for item in spec["env"]:
            if "valueFrom" in item:
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "hyv-secrets" and ref["key"] in secrets, item
        values = {
            k: (expand(v, env, secrets) if v is not None else secrets[k])
            for k, v in env.items()
            if k in secrets or v
        }
        settings = settings_from_env(values)  # every value valid for the service
        assert settings.redis_url == f"redis://:{secrets['REDIS_PASSWORD']}@hyv-redis:6379/0"
        assert str(settings.data_dir) == "/data"


def test_commands_and_probes(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    from hyv.service.api.routes_system import router

    routes = {route.path for route in router.routes}  # type: ignore[attr-defined]
    api = container(objects, "hyv-api")
    (serve,) = check_command(api["command"])
    assert check_hyv_command(serve)["workers"] == 0
    env = container_env(objects, api)
    http_port = next(p for p in api["ports"] if p["name"] == "http")["containerPort"]
    assert int(str(env["HYV_PORT"])) == http_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = api[probe]["httpGet"]
        assert get["path"] in routes and get["port"] == "http", probe
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz", (
        "/readyz would hide the API while no worker is up"
    )

    worker = container(objects, "hyv-worker")
    (inner,) = check_command(worker["command"])
    assert inner[:2] == ["hyv", "worker"]
    metrics_port = next(p for p in worker["ports"] if p["name"] == "metrics")["containerPort"]
    assert int(option_value(strip_init(worker["command"]), "--port") or 0) == metrics_port
    for probe in ("startupProbe", "livenessProbe"):
        check_command(worker[probe]["exec"]["command"])
        assert worker[probe]["exec"]["command"][-1] == "worker"


def test_worker_gets_a_gpu_and_the_api_none(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    worker = container(objects, "hyv-worker")
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert container_env(objects, worker)["HYV_DEVICE"] == "cuda"
    api = container(objects, "hyv-api")
    assert "nvidia.com/gpu" not in str(api.get("resources"))
    spec = workloads(objects)["hyv-worker"]["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0, "no spare GPU for a surge pod"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 300, (
        "a stopping worker finishes its job"
    )


def test_selectors_and_ports(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, workload in workloads(objects).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, service in of_kind(objects, "Service").items():
        selector = service["spec"]["selector"]
        matched = [
            w
            for w in workloads(objects).values()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service {name} selects {len(matched)} workloads"
        ports = {
            p["name"]: p["containerPort"]
            for c in matched[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port['targetPort']}"
            assert port["port"] == ports[port["targetPort"]], name


def test_redis_persistence_and_noeviction(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    redis = container(objects, "hyv-redis")
    args = [str(a) for a in redis["args"]]
    assert option_value(args, "--appendonly") == "yes"
    assert option_value(args, "--maxmemory-policy") == "noeviction"
    assert option_value(args, "--requirepass") == "$(REDIS_PASSWORD)"
    assert {m["mountPath"] for m in redis["volumeMounts"]} == {"/data"}
    claims = workloads(objects)["hyv-redis"]["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == [redis["volumeMounts"][0]["name"]]
    service = of_kind(objects, "Service")["hyv-redis"]
    assert service["spec"]["ports"][0]["port"] == 6379


def test_shared_storage(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    data = of_kind(objects, "PersistentVolumeClaim")["hyv-data"]
    assert data["spec"]["accessModes"] == ["ReadWriteMany"], "API and workers on different nodes share it"
    for name in ("hyv-api", "hyv-worker"):
        pod = workloads(objects)[name]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        spec = container(objects, name)
        mounts = {m["mountPath"]: m for m in spec["volumeMounts"]}
        data_dir = container_env(objects, spec)["HYV_DATA_DIR"]
        assert volumes[mounts[str(data_dir)]["name"]]["persistentVolumeClaim"]["claimName"] == "hyv-data"
        assert mounts["/weights"]["readOnly"] is True
        tmp = container_env(objects, spec)["PROMETHEUS_MULTIPROC_DIR"]
        assert str(tmp).startswith("/tmp/") and "emptyDir" in volumes[mounts["/tmp"]["name"]], name


def test_service_monitors(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    services = of_kind(objects, "Service")
    jobs = set()
    for name, monitor in of_kind(objects, "ServiceMonitor").items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [
            s for s_name, s in services.items() if selector.items() <= s["metadata"].get("labels", {}).items()
        ]
        assert len(matched) == 1, f"ServiceMonitor {name} selects {len(matched)} Services"
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names and endpoint["path"] == "/metrics", name
        jobs.add(matched[0]["metadata"]["name"])  # the job label Prometheus Operator gives
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r'job="([^"]+)"', alerts))
    assert used <= jobs, f"the alerts use jobs {sorted(used - jobs)} that no ServiceMonitor makes"
    scrape = {j["job_name"] for j in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]}
    assert used <= scrape, "and the compose Prometheus has the same job names"


def test_prometheus_rule_is_alerts_yml(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    rule = of_kind(objects, "PrometheusRule")["hyv"]
    assert rule["spec"]["groups"] == load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]


def test_keda_scales_workers_on_the_celery_queue(
    objects: dict[tuple[str, str], dict[str, Any]], secrets: dict[str, str]
) -> None:
    from hyv.service.settings import queue_name

    scaled = of_kind(objects, "ScaledObject")["hyv-worker"]["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "hyv-worker")
    assert ("Deployment", "hyv-worker") in objects
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    config = objects[("ConfigMap", "hyv-config")]["data"]
    assert metadata["listName"] == queue_name(config["HYV_MODEL_NAME"]), (
        "the Celery list key = the queue name"
    )
    namespace = load_yaml(K8S / "kustomization.yaml")["namespace"]
    assert metadata["address"] == f"hyv-redis.{namespace}.svc.cluster.local:6379"
    assert int(metadata["listLength"]) >= 1
    auth = of_kind(objects, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password" and ref["name"] == "hyv-secrets" and ref["key"] in secrets
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_kustomize_builds(tmp_path: Any, secrets: dict[str, str]) -> None:
    """`kubectl kustomize` (offline) renders the whole set: namespace, labels, the generated Secret."""
    import shutil
    import subprocess

    import yaml

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the manifests are still parsed by the tests above)")
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    result = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    namespace = load_yaml(K8S / "kustomization.yaml")["namespace"]
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hyvideo-serve"
    (secret,) = [doc for doc in rendered if doc["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "hyv-secrets" and set(secret["data"]) == set(secrets)
    kinds = {doc["kind"] for doc in rendered}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "PersistentVolumeClaim",
        "ScaledObject",
        "ServiceMonitor",
    } <= kinds
