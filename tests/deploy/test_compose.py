"""docker-compose.yml, deploy/compose/multi-gpu.yml (one worker group on all GPUs),
deploy/compose/gpu-per-worker.yml (one worker per GPU), .env.example, the Dockerfile and
.dockerignore, checked against the code (there is no Docker engine here: the files are parsed, and
the overlay files merged onto the main one as compose merges them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.common import (
    COMPOSE_FILES,
    DEPLOY,
    HOST_ONLY_SETTINGS,
    ROOT,
    STANDARD_ENV,
    allowed_env_names,
    check_command,
    check_hyv_command,
    code_env_names,
    env_example,
    interpolate,
    load_yaml,
    option_value,
    referenced_variables,
    required_variables,
    settings_env_names,
    settings_from_env,
)

# What the required variables are set to when the tests interpolate the files.
TEST_ENV = {"REDIS_PASSWORD": "test-password", "HYV_API_KEYS": "test-key"}
OUR_SERVICES = ("api", "worker", "worker-cpu")
WORKERS = ("worker", "worker-cpu")
GROUP_FILE = DEPLOY / "compose" / "multi-gpu.yml"
PER_GPU_FILE = DEPLOY / "compose" / "gpu-per-worker.yml"
# The GPU layouts on a box: (-f overlay or None, the GPUs each GPU worker service reserves).
GPU_LAYOUTS: list[tuple[Path | None, dict[str, list[str]]]] = [
    (None, {"worker": ["0"]}),
    (GROUP_FILE, {"worker": ["0", "1", "2", "3"]}),
    (PER_GPU_FILE, {"worker": ["0"], "worker-gpu1": ["1"], "worker-gpu2": ["2"], "worker-gpu3": ["3"]}),
]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def multi_gpu() -> dict[str, dict[str, Any]]:
    return load_yaml(GROUP_FILE)["services"]


@pytest.fixture(scope="module")
def per_gpu() -> dict[str, dict[str, Any]]:
    return load_yaml(PER_GPU_FILE)["services"]


# --- compose's merge of an overlay file (-f) onto the main file ---------------------------------


class Tagged:
    """A value tagged `!override` (replaces the base value) or `!reset` (removes it)."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


class _TagKeepingLoader(yaml.SafeLoader):
    pass


def _keep_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        return Tagged("!" + suffix, loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Tagged("!" + suffix, loader.construct_sequence(node, deep=True))
    return Tagged("!" + suffix, loader.construct_scalar(node))  # type: ignore[arg-type]


_TagKeepingLoader.add_multi_constructor("!", _keep_tag)

# Sequences compose replaces instead of appending to (its merge rules: "shell commands").
REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def untagged(value: Any) -> Any:
    if isinstance(value, Tagged):
        return untagged(value.value)
    if isinstance(value, dict):
        return {k: untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untagged(v) for v in value]
    return value


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge: mappings merged key by key, sequences appended (shell commands replaced),
    scalars replaced, `!override` replaces whatever was there."""
    if isinstance(override, Tagged):
        assert override.tag == "!override", override.tag
        return untagged(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            if isinstance(v, Tagged) and v.tag == "!reset":
                merged.pop(k, None)
            else:
                merged[k] = merge(base[k], v, k) if k in base else untagged(v)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED_SEQUENCES:
        return base + [v for v in untagged(override) if v not in base]
    return untagged(override)


def services_with(overlay: Path | None) -> dict[str, dict[str, Any]]:
    """The services `docker compose -f docker-compose.yml [-f overlay]` runs (extends resolved)."""
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    if overlay is None:
        return dict(services)
    merged = dict(services)
    for name, service in yaml.load(overlay.read_text(), Loader=_TagKeepingLoader)["services"].items():
        if "extends" in service:
            extends = untagged(service["extends"])
            assert extends["file"] == "docker-compose.yml", (name, extends)
            base = services[extends["service"]]
            service = {k: v for k, v in service.items() if k != "extends"}
        else:
            assert name in services, f"{overlay.name}: {name} overrides no service of the main file"
            base = services[name]
        merged[name] = merge(base, service)
    return merged


def gpu_ids(service: dict[str, Any]) -> list[str]:
    """The GPUs a service reserves (one nvidia device request with explicit ids), [] for none."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    if not devices:
        return []
    (device,) = devices  # a second request would be a second, unchecked set of GPUs
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], device
    assert "count" not in device, "replicas of one service would all get the same GPU"
    return [str(gpu) for gpu in interpolate(device["device_ids"], TEST_ENV)]


def seconds(duration: str) -> float:
    """A compose duration (`15m`, `1h30m`, `90s`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def resolved_env(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    """The container environment compose would set (unset pass-through variables dropped)."""
    values = interpolate(service.get("environment") or {}, {**TEST_ENV, **(env or {})})
    return {k: str(v) for k, v in values.items() if v is not None}


def uses_our_image(service: dict[str, Any]) -> bool:
    return "build" in service or "HYVIDEO_IMAGE" in str(service.get("image", ""))


def test_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert {"api", "worker", "worker-cpu", "redis", "prometheus", "grafana"} <= set(services)
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("api", "redis", "prometheus", "grafana"):
        assert "profiles" not in services[name], f"{name} must run in every profile"
    assert env_example()["COMPOSE_PROFILES"] == ("gpu", True), "`docker compose up` = the GPU stack"
    for name in OUR_SERVICES:
        assert uses_our_image(services[name]), name


@pytest.mark.parametrize("overlay", [None, GROUP_FILE, PER_GPU_FILE], ids=["main", "group", "per-gpu"])
def test_every_environment_variable_is_read_by_the_code(overlay: Path | None) -> None:
    allowed = allowed_env_names()
    for name, service in services_with(overlay).items():
        if not uses_our_image(service):
            continue
        unknown = set(service.get("environment") or {}) - allowed
        assert not unknown, f"{name} sets {sorted(unknown)}: no setting or code reads them"
        hyv = {k for k in (service.get("environment") or {}) if k.startswith("HYV_")}
        assert hyv <= settings_env_names() | code_env_names(), name


def test_the_service_reads_hyv_variables_only_through_settings() -> None:
    """Every HYV_* variable of the service is a Settings field (documented, validated, passed on to
    child processes by the launcher); no module of hyv/service reads one itself."""
    assert not {name for name in code_env_names() if name.startswith("HYV_")}
    assert "PROMETHEUS_MULTIPROC_DIR" in code_env_names()  # the scan finds what is read


def test_environment_values_are_valid_settings(services: dict[str, dict[str, Any]]) -> None:
    for name in OUR_SERVICES:
        env = resolved_env(services[name])
        settings = settings_from_env(env)  # raises on a value the service would reject
        assert str(settings.data_dir) == "/data"
        assert settings.redis_url == "redis://:test-password@redis:6379/0"
        assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/hyv-metrics"
    assert settings_from_env(resolved_env(services["api"])).api_keys == ["test-key"]
    assert settings_from_env(resolved_env(services["worker"])).device == "cuda"
    cpu = settings_from_env(resolved_env(services["worker-cpu"]))
    assert (cpu.device, cpu.dtype) == ("cpu", "fp32")
    # Other boxes point their workers at the first box's Redis.
    remote = resolved_env(services["worker"], {"HYV_REDIS_URL": "redis://:pw@box1:6379/0"})
    assert remote["HYV_REDIS_URL"] == "redis://:pw@box1:6379/0"


def test_every_setting_is_configurable_and_documented(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Every Settings field can be set through the environment: passed through by the shared
    x-hyv-env block or set per service, and listed in .env.example."""
    shared = set(compose["x-hyv-env"])
    per_service = set().union(*(set(services[name]["environment"]) for name in OUR_SERVICES))
    missing = settings_env_names() - shared - per_service - set(HOST_ONLY_SETTINGS)
    assert not missing, f"settings compose cannot set: {sorted(missing)}"
    assert set(HOST_ONLY_SETTINGS) <= settings_env_names(), "HOST_ONLY_SETTINGS names a removed setting"
    assert not set(HOST_ONLY_SETTINGS) & (shared | per_service), "compose sets a host-only setting"
    documented = set(env_example())
    assert not settings_env_names() - documented, sorted(settings_env_names() - documented)
    for name in documented:
        if name.startswith("HYV_"):
            assert name in settings_env_names() | code_env_names(), f".env.example: {name} is read by nothing"


def test_env_example_documents_every_compose_variable() -> None:
    documented = env_example()
    for path in COMPOSE_FILES:
        data = load_yaml(path)
        names = referenced_variables(data)
        missing = names - set(documented)
        assert not missing, f"{path.name} uses {sorted(missing)}, not in .env.example"
        for name in required_variables(data):
            _value, active = documented[name]
            assert active, f"{name} is required: .env.example must list it uncommented"


def test_commands_exist(services: dict[str, dict[str, Any]]) -> None:
    api = [str(a) for a in services["api"]["command"]]
    (serve,) = check_command(api)
    params = check_hyv_command(serve)
    assert params["workers"] == 0, "the API container runs no worker of its own"
    for name in OUR_SERVICES:
        check_command(services[name]["healthcheck"]["test"][1:])
    for overlay in (None, GROUP_FILE, PER_GPU_FILE):
        workers = {name: s for name, s in services_with(overlay).items() if name.startswith("worker")}
        names = set()
        for name, service in workers.items():
            (inner,) = check_command(service["command"])
            assert inner[:2] == ["hyv", "worker"], name
            names.add(check_hyv_command(inner)["name"])
            check_command(service["healthcheck"]["test"][1:])
        assert len(names) == len(workers), f"{overlay}: every worker service has its own name"


def test_ports_agree(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    def container_ports(service: dict[str, Any], env: dict[str, str] | None = None) -> set[int]:
        ports = interpolate(service.get("ports") or [], {**TEST_ENV, **(env or {})})
        return {int(str(p).rsplit(":", 1)[1]) for p in ports}

    api_port = int(resolved_env(services["api"])["HYV_PORT"])
    assert container_ports(services["api"]) == {api_port}
    assert services["api"]["healthcheck"]["test"][-1] == "api"  # it reads HYV_PORT
    scrape = {
        job["job_name"]: job for job in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    }
    assert scrape["hyv-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]

    dns = scrape["hyv-worker"]["dns_sd_configs"][0]
    for name in WORKERS:
        port = int(option_value([str(a) for a in services[name]["command"]], "--port") or 0)
        assert port == dns["port"], f"{name}'s exporter port is not the one Prometheus scrapes"
        assert dns["names"][0] in services[name]["networks"]["default"]["aliases"], name
    assert container_ports(services["worker"]) == {dns["port"]}
    assert container_ports(services["redis"]) == {6379}
    assert container_ports(services["prometheus"]) == {9090}
    assert container_ports(services["grafana"]) == {3000}
    for name, service in services.items():  # published on loopback unless the operator says otherwise
        for port in interpolate(service.get("ports") or [], TEST_ENV):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


@pytest.mark.parametrize(("overlay", "expected"), GPU_LAYOUTS, ids=["main", "group", "per-gpu"])
def test_gpu_reservation(overlay: Path | None, expected: dict[str, list[str]]) -> None:
    """Each GPU of the box belongs to one worker service, and a worker owns as many devices
    (HYV_SP_DEGREE, or `--sp` on its command) as it reserves GPUs."""
    services = services_with(overlay)
    reserved = {name: gpu_ids(service) for name, service in services.items() if gpu_ids(service)}
    assert reserved == expected
    seen = [gpu for gpus in reserved.values() for gpu in gpus]
    assert len(seen) == len(set(seen)), f"a GPU is reserved twice: {reserved}"
    for name, gpus in reserved.items():
        settings = settings_from_env(resolved_env(services[name]))
        (inner,) = check_command(services[name]["command"])
        sp = check_hyv_command(inner)["sp"]
        degree = sp if sp is not None else settings.sp_degree
        assert degree == len(gpus), f"{name}: {len(gpus)} GPUs but a group of {degree} devices"
        assert settings.device == "cuda", name
    for name in ("worker-cpu", "api", "redis", "prometheus", "grafana"):
        assert "deploy" not in services[name], f"{name} must not need a GPU"


def test_overlay_files(multi_gpu: dict[str, dict[str, Any]], per_gpu: dict[str, dict[str, Any]]) -> None:
    """The group file turns the main `worker` into the group (so no GPU worker is left beside it);
    the per-GPU file adds workers extending the main `worker` (its settings, volumes, health check)."""
    assert set(multi_gpu) == {"worker"}
    assert "extends" not in multi_gpu["worker"]
    for name, service in per_gpu.items():
        assert name.startswith("worker-gpu"), name
        assert service["extends"] == {"file": "docker-compose.yml", "service": "worker"}
        assert (ROOT / service["extends"]["file"]).is_file()
    for overlay in (GROUP_FILE, PER_GPU_FILE):
        for name, service in services_with(overlay).items():
            if name.startswith("worker"):
                assert service["profiles"] == services_with(None)[name.split("-gpu")[0]]["profiles"]
                assert "hyv-workers" in service["networks"]["default"]["aliases"], name


def test_worker_group_layout_fits_the_models() -> None:
    """The group's settings make a valid sequence-parallel layout (hyv worker checks it at start,
    before any process starts) for the 13B's attention heads and the bundled model's, with the
    file's defaults and with each mode .env may choose."""
    from hyv.engine.parallel.groups import layout_for
    from hyv.models.dit_config import dit_preset
    from hyv.service.worker_group import check_layout

    worker = services_with(GROUP_FILE)["worker"]
    heads_13b = dit_preset("hunyuan-video-13b").num_heads
    assert heads_13b == 24
    for mode in (None, "usp", "ulysses", "ring"):
        env = resolved_env(worker, {"HYV_SP_MODE": mode} if mode else {})
        settings = settings_from_env(env)
        assert settings.sp_degree == len(gpu_ids(worker)) >= 2
        layout = layout_for(settings.sp_mode, settings.sp_degree, heads_13b, settings.sp_ulysses_degree)
        assert layout.world_size == settings.sp_degree
        if settings.sp_mode != "ring":
            assert layout.ulysses_degree == settings.sp_degree, "24 heads split over 4 GPUs: ulysses only"
        if mode in (None, "usp", "ring"):  # ulysses needs the degree to divide the heads (2 here)
            bundled = check_layout(settings.model_copy(update={"weights": ROOT / "weights" / "hyv-small"}))
            assert bundled.world_size == settings.sp_degree
    # The file's comment: any of 2, 4, 8 GPUs works for 13B under the default usp and plain ulysses.
    for degree in (2, 4, 8):
        for mode in ("usp", "ulysses"):
            assert layout_for(mode, degree, heads_13b).world_size == degree
    with pytest.raises(ValueError, match="ulysses degree"):  # the check can fail: 3 does not divide 2
        check_layout(
            settings_from_env(
                {**resolved_env(worker), "HYV_SP_DEGREE": "3", "HYV_SP_MODE": "ulysses"}
            ).model_copy(update={"weights": ROOT / "weights" / "hyv-small"})
        )


def test_worker_group_has_shared_memory_and_drains_its_job(services: dict[str, dict[str, Any]]) -> None:
    """NCCL moves data between a box's GPUs through /dev/shm (Docker's default: 64 MB); a stopping
    group finishes its job first, which is at least as long a wait as a one-GPU worker's."""
    group = services_with(GROUP_FILE)["worker"]
    assert group.get("ipc") == "host" or str(group.get("shm_size", "")).endswith(("g", "gb")), (
        "NCCL needs shared memory: ipc: host or a shm_size of some GB"
    )
    for name, service in services_with(PER_GPU_FILE).items():
        if name.startswith("worker"):
            assert "ipc" not in service and "shm_size" not in service, f"{name} is no group"
    grace = seconds(interpolate(group["stop_grace_period"], TEST_ENV))
    assert grace >= seconds(interpolate(services["worker"]["stop_grace_period"], TEST_ENV))
    assert grace >= 1800


def test_redis_persistence_and_noeviction(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = interpolate([str(a) for a in redis["command"]], TEST_ENV)
    assert command[0] == "redis-server"
    assert option_value(command, "--appendonly") == "yes"
    assert option_value(command, "--maxmemory-policy") == "noeviction"
    assert option_value(command, "--requirepass") == TEST_ENV["REDIS_PASSWORD"]
    assert any(str(v).endswith(":/data") for v in redis["volumes"]), "the AOF must be on a volume"
    assert "ping" in " ".join(redis["healthcheck"]["test"])
    assert resolved_env(redis) == {"REDISCLI_AUTH": TEST_ENV["REDIS_PASSWORD"]}


def test_healthchecks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    conditions = {
        ("api", "redis"): "service_healthy",
        ("worker", "redis"): "service_healthy",
        ("worker-cpu", "redis"): "service_healthy",
        ("prometheus", "api"): "service_started",
        ("grafana", "prometheus"): "service_healthy",
    }
    for (name, dependency), condition in conditions.items():
        assert services[name]["depends_on"][dependency]["condition"] == condition, (name, dependency)
    for name in WORKERS:
        assert services[name]["healthcheck"]["test"][-1] == "worker"


def test_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    data_mounts = set()
    for name in OUR_SERVICES:
        volumes = interpolate(services[name]["volumes"], TEST_ENV)
        data = [v for v in volumes if v.split(":")[1] == "/data"]
        assert len(data) == 1, name
        data_mounts.add(data[0])
        assert any(v.endswith(":/weights:ro") for v in volumes), f"{name}: weights mounted read-only"
        assert services[name]["tmpfs"][0].split(":")[0] == "/tmp/hyv-metrics", "metrics folder per container"
    assert data_mounts == {"hyv-data:/data"}, "API and workers share one storage volume"
    for name, service in services.items():
        for volume in interpolate(service.get("volumes") or [], TEST_ENV):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_prometheus_and_grafana_mounts(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file(), rule_file

    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./deploy/grafana/dashboards"]
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "hyv.yml")["providers"][0]
    assert provider["options"]["path"] == dashboards_dir
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["isDefault"]


def _docker_compose() -> list[str] | None:
    if os.environ.get("DOCKER_COMPOSE"):
        return os.environ["DOCKER_COMPOSE"].split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize(
    ("files", "profile"),
    [
        (["docker-compose.yml"], "gpu"),
        (["docker-compose.yml"], "cpu"),
        (["docker-compose.yml", "deploy/compose/multi-gpu.yml"], "gpu"),
        (["docker-compose.yml", "deploy/compose/gpu-per-worker.yml"], "gpu"),
    ],
)
def test_docker_compose_config_accepts_the_files(files: list[str], profile: str) -> None:
    """The real compose loader (schema, interpolation, extends, !override), where one is installed."""
    command = _docker_compose()
    if command is None:
        pytest.skip("no docker compose / docker-compose here (set DOCKER_COMPOSE to a compose binary)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYV_", "COMPOSE_"))}
    env.update(TEST_ENV)
    args = [*command, "--project-directory", str(ROOT)]
    for file in files:
        args += ["-f", str(ROOT / file)]
    result = subprocess.run(
        [*args, "--profile", profile, "config", "--services"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    running = set(result.stdout.split())
    assert {"api", "redis", "prometheus", "grafana"} <= running
    assert ("worker-cpu" in running) == (profile == "cpu")
    assert ("worker" in running) == (profile == "gpu")


# --- the image --------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert re.match(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu", froms[-1]), froms[-1]
    assert "-devel-" in froms[0], "flash-attn compiles in the builder stage (nvcc)"
    args = {rest.split("=")[0]: rest.partition("=")[2] for keyword, rest in instructions if keyword == "ARG"}
    assert {"FLASH_ATTN_VERSION", "XFORMERS_VERSION", "TORCH_VERSION", "TORCH_CUDA"} <= set(args)
    makefile = (ROOT / "Makefile").read_text()
    assert f"TORCH_VERSION ?= {args['TORCH_VERSION']}" in makefile, "the image pins the Makefile's torch"
    assert args["TORCH_CUDA"].startswith("cu"), "a CUDA build of torch"
    text = (ROOT / "Dockerfile").read_text()
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in text

    user = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user and user[-1] not in ("root", "0"), "runs as a non-root user"
    healthcheck = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert healthcheck, "HEALTHCHECK"
    check_command(json.loads(healthcheck[-1].split("CMD", 1)[1].strip()))
    volumes = " ".join(rest for keyword, rest in instructions if keyword == "VOLUME")
    assert '"/weights"' in volumes and '"/data"' in volumes
    entrypoint = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint[-1] == '["/usr/bin/tini", "--"]'
    check_command(json.loads([rest for keyword, rest in instructions if keyword == "CMD"][-1]))

    env_names = set()
    for keyword, rest in instructions:
        if keyword == "ENV":
            env_names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", rest))
    ours = {n for n in env_names if n.startswith("HYV_") or n in STANDARD_ENV}
    assert ours <= allowed_env_names(), sorted(ours - allowed_env_names())
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/hyv-metrics" in text
    settings_from_env({"HYV_DATA_DIR": "/data", "HYV_WEIGHTS": "/app/weights/hyv-small"})

    for keyword, rest in instructions:
        if keyword == "COPY" and "--from" not in rest:
            sources = rest.split()[:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_installs_the_text_encoder_extra_from_the_lock() -> None:
    """HYV_TEXT_ENCODER (the 13B's LLaVA-LLaMA-3 + CLIP) needs transformers, tokenizers and
    sentencepiece in the image, at the lock file's versions like every other dependency."""
    import tomllib

    instructions = dockerfile_instructions()
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    installs = [run for run in runs if "pip install -c requirements/lock.txt" in run]
    assert installs, "the dependencies are installed with the lock file as constraints"
    assert "['optional-dependencies']['text-encoders']" in installs[0]
    copies = [rest.split() for keyword, rest in instructions if keyword == "COPY" and "--from" not in rest]
    copied = {source.rstrip("/") for sources in copies for source in sources[:-1]}
    assert "requirements" in copied and "hyv" in copied and "setup.py" in copied
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!; \[]", req)[0] for req in extra["text-encoders"]}
    assert {"transformers", "tokenizers", "sentencepiece"} <= names
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    for name in names:
        assert re.search(rf"^{name}==", lock, re.M), f"{name} is not pinned in requirements/lock.txt"


def test_dockerignore() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    for needed in (".git", ".venv", "data", "runs", "weights/*", "!weights/hyv-small", ".env"):
        assert needed in patterns, needed
    excluded = {p for p in patterns if not p.startswith("!")}
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert source.rstrip("/") not in excluded, f"COPY {source} but .dockerignore drops it"
    for module in ("hyv/service/healthcheck.py", "hyv/service/metrics_exporter.py"):
        assert not any(module.startswith(p.rstrip("/") + "/") for p in excluded), module
