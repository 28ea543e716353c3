"""HunyuanVideo release folders, served as they are downloaded (no torch: the API reads them too).

Two layouts are recognised wherever a model bundle is expected (`read_bundle_spec`, `load_bundle`,
so `hyv generate`, `hyv serve`, the API and the workers), and `hyv convert` turns either into a
bundle:

* Tencent's release (`huggingface-cli download tencent/HunyuanVideo --local-dir ckpts`), given as
  the `ckpts` folder or as `ckpts/hunyuan-video-t2v-720p` (the text encoders are then its siblings):

      hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt   the DiT (under "module")
          or mp_rank_00_model_states_fp8.pt + mp_rank_00_model_states_fp8_map.pt, the FP8 release
          (float8 block linears and their scales; used when the bf16 file is absent)
      hunyuan-video-t2v-720p/vae/pytorch_model.pt + config.json         AutoencoderKLCausal3D
      text_encoder/                                                      LLaVA-LLaMA-3's LLaMA + tokenizer
      text_encoder_2/                                                    clip-vit-large-patch14 + tokenizer

* the diffusers repository (hunyuanvideo-community/HunyuanVideo): `model_index.json`
  (HunyuanVideoPipeline), `transformer/`, `vae/`, `text_encoder/`, `text_encoder_2/`,
  `tokenizer/`, `tokenizer_2/`, `scheduler/scheduler_config.json` (its `shift` is the flow shift).

The served defaults and limits are the 13B's (`BUNDLE_PRESETS["hunyuan-video-13b"]`: its
resolution buckets, 129 frames, 50 steps, embedded guidance 6.0, flow shift 7.0 or the diffusers
scheduler's); the DiT and VAE architectures are read from the checkpoints when they are loaded.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hyv.engine.bundle_spec import BUNDLE_PRESETS, BundleSpec

OFFICIAL_T2V_DIR = "hunyuan-video-t2v-720p"
OFFICIAL_DIT_FILE = "transformers/mp_rank_00_model_states.pt"
OFFICIAL_FP8_DIT_FILE = "transformers/mp_rank_00_model_states_fp8.pt"
OFFICIAL_FP8_MAP_FILE = "transformers/mp_rank_00_model_states_fp8_map.pt"  # its scales
OFFICIAL_VAE_FILES = ("vae/pytorch_model.pt", "vae/config.json")
TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_2")  # each with config.json
DIFFUSERS_INDEX = "model_index.json"
DIFFUSERS_PIPELINE = "HunyuanVideoPipeline"
DIFFUSERS_SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
DIFFUSERS_TOKENIZER_DIRS = ("tokenizer", "tokenizer_2")
RELEASE_PRESET = "hunyuan-video-13b"

WHAT_IS_LOOKED_FOR = (
    f"a HunyuanVideo release: Tencent's ckpts folder ({OFFICIAL_T2V_DIR}/{OFFICIAL_DIT_FILE}, "
    f"{OFFICIAL_T2V_DIR}/vae/, text_encoder/, text_encoder_2/) or the diffusers repository "
    f"({DIFFUSERS_INDEX}, transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, "
    "scheduler/)"
)


@dataclass(frozen=True)
class ReleaseLayout:
    """Where a release folder keeps each component, in the forms the hyv.models loaders take."""

    kind: Literal["official", "diffusers"]
    root: Path  # the folder as given
    dit: Path  # official: the .pt file; diffusers: transformer/ (hyv.models.load_dit)
    vae: Path  # vae/ (hyv.models.load_vae)
    text_encoders: Path  # holds text_encoder/ + text_encoder_2/ (hyv.models.load_text_encoder)
    spec: BundleSpec
    supports_image: bool = False

    @property
    def weight_files(self) -> list[Path]:
        """The DiT's weight files (their age is the model's `created` time)."""
        if self.dit.is_file():
            return [self.dit]
        return sorted(self.dit.glob("*.safetensors"))


def release_spec(flow_shift: float) -> BundleSpec:
    """The 13B's bundle spec with the release's flow shift; a release holds trained weights."""
    base = BUNDLE_PRESETS[RELEASE_PRESET]
    limits = dataclasses.replace(base.limits, flow_shift=float(flow_shift))
    return dataclasses.replace(base, limits=limits, trained=True)


def find_release(directory: str | Path) -> ReleaseLayout | None:
    """The release layout of `directory`, or None if it shows no sign of one.

    A folder that looks like a release but lacks a piece raises FileNotFoundError naming every
    missing path; an unsupported release (another pipeline class) raises ValueError.
    """
    directory = Path(directory)
    if (directory / DIFFUSERS_INDEX).is_file():
        return _diffusers_layout(directory)
    if (directory / OFFICIAL_T2V_DIR).is_dir():
        return _official_layout(directory / OFFICIAL_T2V_DIR, directory, directory)
    if directory.name == OFFICIAL_T2V_DIR or (directory / "transformers").is_dir():
        return _official_layout(directory, directory.parent, directory)
    return None


def _require(root: Path, names: list[str], what: str) -> None:
    missing = [str(root / name) for name in names if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"{what} is incomplete: missing {', '.join(missing)}")


def _official_layout(model_dir: Path, encoders_dir: Path, given: Path) -> ReleaseLayout:
    text_configs = [f"{name}/config.json" for name in TEXT_ENCODER_DIRS]
    dit_files = [OFFICIAL_DIT_FILE]
    if not (model_dir / OFFICIAL_DIT_FILE).exists() and (model_dir / OFFICIAL_FP8_DIT_FILE).exists():
        dit_files = [OFFICIAL_FP8_DIT_FILE, OFFICIAL_FP8_MAP_FILE]
    _require(model_dir, [*dit_files, *OFFICIAL_VAE_FILES], f"HunyuanVideo release {given}")
    _require(encoders_dir, text_configs, f"HunyuanVideo release {given} (its text encoders)")
    return ReleaseLayout(
        kind="official",
        root=given,
        dit=model_dir / dit_files[0],
        vae=model_dir / "vae",
        text_encoders=encoders_dir,
        spec=release_spec(BUNDLE_PRESETS[RELEASE_PRESET].limits.flow_shift),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _diffusers_layout(directory: Path) -> ReleaseLayout:
    index = _read_json(directory / DIFFUSERS_INDEX)
    if index.get("_class_name") != DIFFUSERS_PIPELINE:
        raise ValueError(
            f"{directory / DIFFUSERS_INDEX} is for {index.get('_class_name')!r}; only the text-to-video "
            f"{DIFFUSERS_PIPELINE} (hunyuanvideo-community/HunyuanVideo) can be served from its folder"
        )
    needed = ["transformer/config.json", "vae/config.json", DIFFUSERS_SCHEDULER_CONFIG]
    needed += [f"{name}/config.json" for name in TEXT_ENCODER_DIRS] + list(DIFFUSERS_TOKENIZER_DIRS)
    _require(directory, needed, f"diffusers HunyuanVideo folder {directory}")
    if not any((directory / "transformer").glob("*.safetensors")):
        raise FileNotFoundError(
            f"diffusers HunyuanVideo folder {directory} is incomplete: no "
            f"{directory / 'transformer'}/diffusion_pytorch_model*.safetensors"
        )
    scheduler_path = directory / DIFFUSERS_SCHEDULER_CONFIG
    shift = _read_json(scheduler_path).get("shift", BUNDLE_PRESETS[RELEASE_PRESET].limits.flow_shift)
    if not isinstance(shift, int | float) or shift <= 0:
        raise ValueError(f"{scheduler_path}: shift must be a positive number, got {shift!r}")
    transformer = _read_json(directory / "transformer" / "config.json")
    return ReleaseLayout(
        kind="diffusers",
        root=directory,
        dit=directory / "transformer",
        vae=directory / "vae",
        text_encoders=directory,
        spec=release_spec(shift),
        supports_image=transformer.get("image_condition_type") is not None,
    )
