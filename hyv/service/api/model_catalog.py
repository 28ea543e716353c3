"""The models the API serves (hyv.service.served_models), each read once from its bundle at start
(hyv.service.api.validation.ServedModel), and the choice a request makes with its `model` field."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from hyv.engine.lora_folder import default_lora_dir
from hyv.service.api.errors import InvalidRequestError
from hyv.service.api.validation import ServedModel
from hyv.service.served_models import served_model_sources
from hyv.service.settings import Settings


class ModelCatalog:
    """The served models by name, in order; the first is the default (a request without `model`)."""

    def __init__(self, models: list[ServedModel]) -> None:
        if not models:
            raise ValueError("a catalog needs at least one model")
        self._models = {model.name: model for model in models}

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        return cls(
            [
                dataclasses.replace(
                    ServedModel.from_bundle(source.name, source.weights, settings.text_encoder),
                    lora_folder=settings.lora_dir or default_lora_dir(source.weights),
                )
                for source in served_model_sources(settings)
            ]
        )

    @property
    def default(self) -> ServedModel:
        return next(iter(self._models.values()))

    @default.setter
    def default(self, model: ServedModel) -> None:
        """Replace the default model's entry (tests adjust what the API believes about it)."""
        rest = [m for name, m in self._models.items() if name not in (self.default.name, model.name)]
        self._models = {m.name: m for m in [model, *rest]}

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def find(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def choose(self, name: str | None, param: str = "model") -> ServedModel:
        """The model a request names (None: the default); a 422 naming the served ones otherwise."""
        if name is None:
            return self.default
        found = self._models.get(name)
        if found is None:
            raise InvalidRequestError(
                f"model {name!r} is not served here; the served models are {self.names}",
                param,
            )
        return found
