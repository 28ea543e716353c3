"""Which models a deployment serves, and which of them a worker loads (no torch: the API reads it).

Three ways to configure them (docs/operations.md, "Several models"):

    (neither set)                       one model: `model_name` served from `weights` (as always)
    HYV_MODELS=hyv-small,hyv-small-teacher
                                        a list: each entry a bundled model's name (shipped with the
                                        package, or a folder of HYV_MODELS_DIR), a bundle or release
                                        path (served under its bundle.json name), or NAME=PATH
    HYV_MODELS_DIR=/weights/models      every subfolder holding a bundle (or a release) is a model,
                                        served under the folder's name

The first model is the default (a request without `model`); from a folder, the one named
`model_name` (HYV_MODEL_NAME, default hyv-small) when it is there, else the first by name. Each model
has its own queue (`hyv.{name}`: hyv.service.settings.queue_name). HYV_WORKER_MODELS (`hyv worker
--models a,b`) picks the models a worker loads and consumes; empty = every served model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hyv.engine.bundle_spec import BUNDLE_FILE, bundled_model_dir, bundled_model_names, read_bundle_spec
from hyv.service.settings import Settings, queue_name


@dataclass(frozen=True)
class ModelSource:
    """A served model: the name requests use, and the bundle (or release folder) it loads."""

    name: str
    weights: Path

    @property
    def queue(self) -> str:
        return queue_name(self.name)


def served_model_sources(settings: Settings) -> list[ModelSource]:
    """The deployment's models, the default first; ValueError naming a bad entry or a name twice."""
    if settings.models:
        sources = [_entry_source(entry, settings.models_dir) for entry in settings.models]
    elif settings.models_dir is not None:
        sources = _folder_sources(settings.models_dir, settings.model_name)
    else:
        return [ModelSource(settings.model_name, Path(settings.weights))]
    seen: dict[str, Path] = {}
    for source in sources:
        if source.name in seen:
            raise ValueError(
                f"two served models are named {source.name!r} ({seen[source.name]} and {source.weights}): "
                "give one another name with NAME=PATH in HYV_MODELS"
            )
        seen[source.name] = source.weights
    return sources


def several_models(settings: Settings) -> bool:
    """Whether the settings name the models themselves (HYV_MODELS or HYV_MODELS_DIR)."""
    return bool(settings.models) or settings.models_dir is not None


def worker_model_sources(settings: Settings) -> list[ModelSource]:
    """The served models this worker loads (HYV_WORKER_MODELS; empty = all); ValueError naming an
    unknown one and the served ones."""
    sources = served_model_sources(settings)
    if not settings.worker_models:
        return sources
    by_name = {source.name: source for source in sources}
    unknown = [name for name in settings.worker_models if name not in by_name]
    if unknown:
        raise ValueError(
            f"worker_models {unknown} are not served here; the served models are {list(by_name)}"
        )
    return [by_name[name] for name in dict.fromkeys(settings.worker_models)]


def worker_queues(settings: Settings) -> str:
    """The Celery queues a worker consumes (`--queues`): its models' queues, comma separated."""
    return ",".join(source.queue for source in worker_model_sources(settings))


def settings_for(settings: Settings, source: ModelSource) -> Settings:
    """The settings with `source` as the model (model_name, weights): what loading one model reads."""
    return settings.model_copy(update={"model_name": source.name, "weights": source.weights})


def _entry_source(entry: str, models_dir: Path | None) -> ModelSource:
    name, sep, path_text = entry.partition("=")
    if sep:
        name, path = name.strip(), Path(path_text.strip()).expanduser()
        if not name:
            raise ValueError(f"models entry {entry!r}: NAME=PATH needs a name")
        _check_model_dir(path, entry)
        return ModelSource(name, path)
    path = Path(entry).expanduser()
    if "/" in entry or entry.startswith("."):
        _check_model_dir(path, entry)
        return ModelSource(read_bundle_spec(path).name, path)
    if models_dir is not None and (Path(models_dir) / entry).is_dir():
        folder = Path(models_dir) / entry
        _check_model_dir(folder, entry)
        return ModelSource(entry, folder)
    bundled = bundled_model_dir(entry)
    if bundled is not None:
        return ModelSource(entry, bundled)
    where = f" nor a folder of {models_dir}" if models_dir is not None else ""
    raise ValueError(
        f"models entry {entry!r} is not a bundled model ({', '.join(bundled_model_names()) or 'none found'})"
        f"{where}; give a path (./{entry}) or NAME=PATH"
    )


def _folder_sources(models_dir: Path, default_name: str) -> list[ModelSource]:
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ValueError(f"models_dir {models_dir} is not a folder")
    sources = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        try:
            read_bundle_spec(folder)
        except (FileNotFoundError, ValueError):
            continue  # not a model: anything else may live beside them
        sources.append(ModelSource(folder.name, folder))
    if not sources:
        raise ValueError(
            f"models_dir {models_dir} has no model folder (none holds a {BUNDLE_FILE} or a release)"
        )
    sources.sort(key=lambda source: source.name != default_name)  # stable: the default first
    return sources


def _check_model_dir(path: Path, entry: str) -> None:
    try:
        read_bundle_spec(path)
    except FileNotFoundError as exc:
        raise ValueError(f"models entry {entry!r}: {exc}") from None
