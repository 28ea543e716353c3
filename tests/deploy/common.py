"""Helpers for the deploy tests: YAML loading (compose's `!override` tags included), the environment
variables the code reads, `${VAR:-default}` interpolation as compose does it, and checks that a
container command is one the project really has (typer/click introspection of `hyv`)."""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = [
    ROOT / "docker-compose.yml",
    DEPLOY / "compose" / "multi-gpu.yml",
    DEPLOY / "compose" / "gpu-per-worker.yml",
]

# Environment variables that our containers may set although no HYV_ setting reads them, and why.
STANDARD_ENV = {
    "PROMETHEUS_MULTIPROC_DIR": "prometheus-client's multiprocess folder (hyv/service/metrics.py reads it)",
    "CUDA_VISIBLE_DEVICES": "which GPUs torch sees",
    "NVIDIA_VISIBLE_DEVICES": "which GPUs the NVIDIA container runtime mounts",
    "NVIDIA_DRIVER_CAPABILITIES": "driver libraries the NVIDIA container runtime mounts",
    "PATH": "the image's virtual environment first",
    "HOME": "the non-root user's home (Triton and torch kernel caches)",
    "PYTHONUNBUFFERED": "log lines leave at once",
    "PYTHONDONTWRITEBYTECODE": "no .pyc files in a read-only image",
    "OMP_NUM_THREADS": "CPU threads of torch",
}

# Settings that only mean something outside the containers, and why: compose does not pass them and
# .env.example does not list them.
HOST_ONLY_SETTINGS = {
    "HYV_REDIS_SERVER": "the redis-server binary of `hyv serve` without HYV_REDIS_URL; the stack has "
    "its own redis service",
}


# --- YAML ------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads compose's merge-control tags (`!override`, `!reset`) as plain nodes."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_multi_constructor("!", _tagged)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Loader)


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=_Loader) if doc is not None]


# --- the environment the code reads ---------------------------------------------------------------


@cache
def settings_env_names() -> frozenset[str]:
    """HYV_<FIELD> for every field of hyv.service.settings.Settings (checked against its env prefix)."""
    from hyv.service.settings import Settings

    prefix = Settings.model_config.get("env_prefix")
    assert prefix == "HYV_", prefix
    return frozenset(f"{prefix}{name.upper()}" for name in Settings.model_fields)


_ENV_READ = re.compile(
    r"""os\.(?:environ\.get|getenv)\(\s*["']([A-Z0-9_]+)["']|os\.environ\[\s*["']([A-Z0-9_]+)["']\s*\]"""
)


@cache
def code_env_names() -> frozenset[str]:
    """Variables read with os.environ / os.getenv in hyv/service/ (e.g. PROMETHEUS_MULTIPROC_DIR;
    no HYV_ one: those are Settings fields)."""
    names: set[str] = set()
    for path in (ROOT / "hyv" / "service").rglob("*.py"):
        for match in _ENV_READ.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return frozenset(names)


def allowed_env_names() -> frozenset[str]:
    return settings_env_names() | code_env_names() | frozenset(STANDARD_ENV)


def settings_from_env(env: Mapping[str, str]) -> Any:
    """Build Settings from HYV_* values exactly as the service would (validates every value)."""
    from hyv.service.settings import Settings

    kwargs: dict[str, Any] = {
        name[len("HYV_") :].lower(): value
        for name, value in env.items()
        if name in settings_env_names() and value is not None
    }
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]


# --- compose interpolation ------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\}|\$\{[^{}]*\})*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt} (nested defaults
    too); `$$` is a literal `$`. A missing required variable raises KeyError."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        current = env.get(name)
        if op in (":-", "-"):
            missing = current is None or (op == ":-" and current == "")
            return interpolate(arg, env) if missing else str(current)
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise KeyError(f"required variable {name} is missing: {arg}")
            return str(current)
        if op in (":+", "+"):
            return interpolate(arg, env) if current else ""
        return "" if current is None else str(current)

    text = value.replace("$$", "\0")
    previous = None
    while previous != text:
        previous, text = text, _VAR.sub(replace, text)
    return text.replace("\0", "$")


def referenced_variables(value: Any) -> set[str]:
    """Names of every ${VAR...} in a parsed YAML value (nested defaults included)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            found |= referenced_variables(k) | referenced_variables(v)
    elif isinstance(value, list):
        for v in value:
            found |= referenced_variables(v)
    elif isinstance(value, str):
        found |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", value.replace("$$", "")))
    return found


def required_variables(value: Any) -> set[str]:
    text = yaml.safe_dump(value)
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))


def env_example() -> dict[str, tuple[str, bool]]:
    """.env.example as {NAME: (value, active)}; `# NAME=value` lines are documented defaults."""
    entries: dict[str, tuple[str, bool]] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            active = match.group(1) is None
            name, value = match.group(2), match.group(3)
            if name not in entries or active:
                entries[name] = (value, active)
    return entries


# --- commands -------------------------------------------------------------------------------------


@cache
def hyv_cli() -> Any:
    import typer

    from hyv.cli import app

    return typer.main.get_command(app)


def check_hyv_command(args: list[str]) -> dict[str, Any]:
    """`hyv SUB [options]`: the subcommand exists and click parses the options (no unknown option,
    values of the right type). Returns the parsed parameters."""
    assert args and args[0] == "hyv", args
    group = hyv_cli()
    assert len(args) >= 2, f"no hyv subcommand in {args}"
    command = group.get_command(None, args[1])
    assert command is not None, f"`hyv {args[1]}` does not exist; hyv has {sorted(group.commands)}"
    try:
        context = command.make_context(f"hyv {args[1]}", list(args[2:]))
    except Exception as exc:  # click's UsageError / BadParameter (typer vendors click)
        raise AssertionError(f"`{shlex.join(args)}`: {exc}") from exc
    return dict(context.params)


def strip_init(args: list[str]) -> list[str]:
    if args[:2] == ["/usr/bin/tini", "--"]:
        return args[2:]
    return args


def check_command(args: Iterable[str]) -> list[list[str]]:
    """A container command: `hyv ...`, `python -m hyv.service.metrics_exporter [...] -- <command>`,
    `python -m hyv.service.healthcheck ROLE`, or `uvicorn --factory module:attr ...`. Returns the hyv
    commands found inside (for further checks)."""
    args = strip_init([str(a) for a in args])
    if args[0] == "hyv":
        check_hyv_command(args)
        return [args]
    if args[0] == "uvicorn":
        assert "--factory" in args, "the API is an app factory: uvicorn needs --factory"
        target = next(a for a in args[1:] if ":" in a and not a.startswith("-"))
        check_import(target)
        return []
    if args[:3] == ["python", "-m", "hyv.service.metrics_exporter"]:
        from hyv.service.metrics_exporter import parse_args

        rest = args[3:]
        parsed = parse_args(rest if "--dir" in rest else ["--dir", "/tmp/x", *rest])
        assert parsed.command, f"the exporter supervises nothing in {args}"
        return check_command(parsed.command)
    if args[:3] == ["python", "-m", "hyv.service.healthcheck"]:
        importlib.import_module("hyv.service.healthcheck")
        assert args[3:] in (["api"], ["worker"]), args
        return []
    raise AssertionError(f"unknown command {args}")


def check_import(target: str) -> Any:
    """'package.module:attr' is importable and callable."""
    module_name, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attr)
    assert callable(obj), target
    return obj


def option_value(args: list[str], option: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


# --- metric names in PromQL -----------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"(?<![A-Za-z0-9_:$])(hyv_[a-z0-9_]+|process_[a-z0-9_]+|up)(?![A-Za-z0-9_:(])")
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(hyv_[a-z0-9_]+|process_[a-z0-9_]+|up)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (our hyv_* series, process_*, and Prometheus' `up`);
    label values and other strings are removed first."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def promql_selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched in its {...}) for each selector with matchers."""
    return [(name, set(_MATCHER.findall(_STRING.sub('""', body)))) for name, body in _SELECTOR.findall(expr)]


def promql_grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in _BY.findall(expr):
        labels |= {part.strip() for part in group.split(",") if part.strip()}
    return labels
