"""deploy/k8s/*.yaml, parsed and checked against the code and against each other: environment,
commands, ports and selectors, the GPU limit, Redis persistence, shared storage, the
ServiceMonitors, the PrometheusRule (= deploy/prometheus/alerts.yml), KEDA's queue name, and the
worker-group component (one pod per N-GPU sequence-parallel group), applied to the base as kustomize
applies it."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.common import (
    DEPLOY,
    ROOT,
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
GROUP = K8S / "worker-group"


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
    assert container_env(objects, worker)["HYV_SP_DEGREE"] == "1", "one GPU, one device per worker"
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


# --- the worker-group component -------------------------------------------------------------------


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge as it applies to the patches here: mappings merged key by key,
    lists of named items (containers, env, volumes, volumeMounts) merged by name, other lists and
    scalars replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(item, dict) and "name" in item for item in [*base, *patch]):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = strategic_merge(merged_list[index[item["name"]]], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 `replace` operations (the only kind the component uses)."""
    doc = copy.deepcopy(doc)
    for operation in operations:
        assert operation["op"] == "replace", operation
        *parents, last = operation["path"].strip("/").split("/")
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        assert last in target, f"{operation['path']}: nothing to replace"
        target[last] = operation["value"]
    return doc


def with_worker_group(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects with the component's patches applied."""
    component = load_yaml(GROUP / "kustomization.yaml")
    assert (component["apiVersion"], component["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    patched = dict(objects)
    for patch in component["patches"]:
        if "path" in patch:
            (doc,) = load_yaml_all(GROUP / patch["path"])
            key = (doc["kind"], doc["metadata"]["name"])
            assert key in objects, f"{patch['path']} patches {key}, which the base does not have"
            patched[key] = strategic_merge(objects[key], doc)
        else:
            key = (patch["target"]["kind"], patch["target"]["name"])
            assert key in objects, f"a patch targets {key}, which the base does not have"
            patched[key] = json_patch(patched[key], yaml.safe_load(patch["patch"]))
    return patched


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes quantity (16Gi, 512Mi, 1G) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(quantity))
    assert match, quantity
    units = {
        None: 1,
        "K": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    return float(match.group(1)) * units[match.group(2)]


def by_name(value: Any) -> Any:
    """Lists of named items as {name: item}, all the way down."""
    if isinstance(value, dict):
        return {k: by_name(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(item, dict) and "name" in item for item in value):
            return {item["name"]: by_name(item) for item in value}
        return [by_name(item) for item in value]
    return value


def enable_worker_group(kustomization_text: str) -> str:
    """kustomization.yaml with its commented `components: [worker-group]` lines uncommented, as the
    docs tell the operator to do."""
    enabled, count = re.subn(
        r"^# (components:)\n# ( +- worker-group)$", r"\1\n\2", kustomization_text, flags=re.M
    )
    assert count == 1, "kustomization.yaml has no commented-out `components: - worker-group` to enable"
    return enabled


def test_worker_group_component_is_offered(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert "components" not in kustomization, "one GPU per pod by default"
    enabled = yaml.safe_load(enable_worker_group((K8S / "kustomization.yaml").read_text()))
    assert enabled["components"] == [GROUP.name] and (GROUP / "kustomization.yaml").is_file()
    assert set(enabled["resources"]) == set(kustomization["resources"])
    group = with_worker_group(objects)
    changed = {key for key in objects if group[key] != objects[key]}
    assert changed == {("Deployment", "hyv-worker"), ("ScaledObject", "hyv-worker")}


def test_worker_group_pod(objects: dict[tuple[str, str], dict[str, Any]], secrets: dict[str, str]) -> None:
    """One pod = one group: as many GPUs as HYV_SP_DEGREE, a layout that fits the 13B's heads and
    the bundled model's, shared memory for NCCL, time to finish a job when stopped."""
    from hyv.engine.parallel.groups import layout_for
    from hyv.models.dit_config import dit_preset
    from hyv.service.worker_group import check_layout

    group = with_worker_group(objects)
    worker = container(group, "hyv-worker")
    assert worker["command"] == container(objects, "hyv-worker")["command"]
    (inner,) = check_command(worker["command"])
    assert check_hyv_command(inner)["sp"] is None, "the degree comes from HYV_SP_DEGREE alone"
    env = container_env(group, worker)
    values = {
        k: (expand(v, env, secrets) if v is not None else secrets[k])
        for k, v in env.items()
        if k in secrets or v
    }
    settings = settings_from_env(values)
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert settings.sp_degree == gpus >= 2, f"{gpus} GPUs but HYV_SP_DEGREE={settings.sp_degree}"
    assert settings.device == "cuda"
    layout = layout_for(
        settings.sp_mode, gpus, dit_preset("hunyuan-video-13b").num_heads, settings.sp_ulysses_degree
    )
    assert layout.world_size == gpus
    bundled = check_layout(settings.model_copy(update={"weights": ROOT / "weights" / "hyv-small"}))
    assert bundled.world_size == gpus

    resources = worker["resources"]
    assert quantity_bytes(resources["requests"]["memory"]) <= quantity_bytes(resources["limits"]["memory"])
    assert quantity_bytes(resources["limits"]["memory"]) >= quantity_bytes(
        container(objects, "hyv-worker")["resources"]["limits"]["memory"]
    ), "N ranks each load the pipeline: no less host memory than one worker"
    pod = workloads(group)["hyv-worker"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(volumes) == {m["name"] for m in worker["volumeMounts"]}, "a volume nothing mounts"
    (shm,) = [m for m in worker["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory", "NCCL needs a RAM-backed /dev/shm"
    assert quantity_bytes(volumes[shm["name"]]["emptyDir"]["sizeLimit"]) >= 2**30
    base_pod = workloads(objects)["hyv-worker"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= max(1800, base_pod["terminationGracePeriodSeconds"]), (
        "a stopping group finishes its (big) job"
    )
    assert workloads(group)["hyv-worker"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_worker_group_autoscaling_keeps_the_gpu_count(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    """KEDA counts pods: with N GPUs a pod, the most pods shrink N-fold for the same GPUs."""
    group = with_worker_group(objects)
    gpus = int(container(group, "hyv-worker")["resources"]["limits"]["nvidia.com/gpu"])
    base_max = of_kind(objects, "ScaledObject")["hyv-worker"]["spec"]["maxReplicaCount"]
    scaled = of_kind(group, "ScaledObject")["hyv-worker"]["spec"]
    assert scaled["maxReplicaCount"] * gpus == base_max * 1
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_kustomize_builds_with_the_worker_group(
    tmp_path: Path, secrets: dict[str, str], objects: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """`kubectl kustomize` with the component enabled as the docs say renders the same worker as the
    patches applied here (so the checks above hold for what kubectl applies)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the component is still applied by the tests above)")
    copy_dir = tmp_path / "k8s"
    shutil.copytree(K8S, copy_dir)
    (copy_dir / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    kustomization = copy_dir / "kustomization.yaml"
    kustomization.write_text(enable_worker_group(kustomization.read_text()))
    result = subprocess.run(
        [kubectl, "kustomize", str(copy_dir)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    expected = with_worker_group(objects)
    for key in (("Deployment", "hyv-worker"), ("ScaledObject", "hyv-worker")):
        # kustomize moves patched list items to the front: compare named items by name
        assert by_name(rendered[key]["spec"]) == by_name(expected[key]["spec"]), key
    env = [item["name"] for item in container(rendered, "hyv-worker")["env"]]
    assert env.index("REDIS_PASSWORD") < env.index("HYV_REDIS_URL"), "$(REDIS_PASSWORD) expands"
