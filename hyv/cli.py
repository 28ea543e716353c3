"""`hyv`: the project's one console command, above every layer.

    generate, init-weights, convert    the engine (one video; a bundle's weights)
    serve, worker                      the HTTP service (hyv.service)
    train ...                          the training recipe (hyv.training.cli, loaded lazily)

Each command imports its layer when it runs, so `hyv --help` and the API container's
`hyv serve --workers 0` never import torch (tests/test_cli.py checks it).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from hyv.engine.bundle_spec import BUNDLE_PRESETS, CHECKOUT_BUNDLE_DIR, DEFAULT_BUNDLE_DIR, read_bundle_spec
from hyv.engine.memory_options import ATTENTION_BACKENDS, TEXT_ENCODER_PLACEMENTS, VAETileSizes

if TYPE_CHECKING:
    import torch

    from hyv.engine.limits import ModelLimits
    from hyv.engine.request import GenerationRequest, LoraChoice

TRAIN_HELP = (
    "Train the bundled model: vae, dit, distill, eval - or all of them in order with `bundle`; "
    "LoRA adapters with `lora`."
)
# The memory options of `hyv generate` and `hyv worker` (docs/operations.md, "Memory options").
TEXT_ENCODER_PLACEMENT_HELP = (
    f"Text encoder: {', '.join(TEXT_ENCODER_PLACEMENTS)} = on the GPU; on the CPU, moved to the GPU for "
    "each prompt; run on the CPU"
)
MODEL_OFFLOAD_HELP = "Text encoder, DiT and VAE each on the GPU only while it runs, on the CPU otherwise"
OFFLOAD_BLOCKS_HELP = "DiT blocks on the CPU, on the GPU one at a time (GPUs smaller than the DiT; slow)"
ATTENTION_BACKEND_HELP = f"Attention backend: auto, {', '.join(ATTENTION_BACKENDS)}; default auto"
VAE_TILE_SIZE_HELP = "VAE decode tile edge in pixels, a multiple of 8; default the VAE's own (256)"
VAE_TILE_FRAMES_HELP = "VAE decode tile length in frames, a multiple of 4; default the VAE's own (64)"
VAE_TILE_OVERLAP_HELP = "Fraction of a VAE tile blended with its neighbour; default the VAE's own (0.25)"

# The option of `hyv generate` that sets each GenerationRequest field (for error messages).
GENERATE_OPTIONS = {
    "prompt": "PROMPT",
    "negative_prompt": "--negative-prompt",
    "image": "--image",
    "width": "--width",
    "height": "--height",
    "num_frames": "--frames",
    "fps": "--fps",
    "steps": "--steps",
    "guidance": "--guidance",
    "seed": "--seed",
    "loras": "--lora",
    "cache": "--cache",
}


class LazyGroup(TyperGroup):
    """A command group whose commands are imported on first use (listing it in `hyv --help` only
    needs its name and help text)."""

    def __init__(self, *, name: str, target: str, help: str) -> None:
        self._target = target  # "module:typer_app_attribute"
        self._group: TyperGroup | None = None
        super().__init__(name=name, help=help, no_args_is_help=True)

    def _load(self) -> TyperGroup:
        if self._group is None:
            module, attribute = self._target.split(":")
            group = typer.main.get_group(getattr(importlib.import_module(module), attribute))
            assert isinstance(group, TyperGroup)
            self._group = group
            self.callback = group.callback
        return self._group

    # typer vendors its own click, so the click types stay Any here.
    @property  # type: ignore[override]
    def commands(self) -> dict[str, Any]:
        return dict(self._load().commands)

    @commands.setter
    def commands(self, value: object) -> None:  # TyperGroup.__init__ assigns an empty dict
        pass

    def invoke(self, ctx: Any) -> Any:
        self._load()
        return super().invoke(ctx)


class RootGroup(TyperGroup):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_command(LazyGroup(name="train", target="hyv.training.cli:train_app", help=TRAIN_HELP))


app = typer.Typer(
    cls=RootGroup,
    help="HunyuanVideo-style video generation: generate, serve, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)  # progress and messages on stderr; stdout carries the JSON line


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _dtype(name: str | None) -> torch.dtype | None:
    from hyv.models.checkpoint_io import parse_dtype

    try:
        return parse_dtype(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command("init-weights")
def init_weights(
    preset: Annotated[str, typer.Option(help=f"Bundle preset: {', '.join(BUNDLE_PRESETS)}.")] = "small",
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")] = CHECKOUT_BUNDLE_DIR,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (bf16 for the 13B).")] = "fp32",
    seed: Annotated[int, typer.Option(help="Initialization seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite an existing bundle.")] = False,
) -> None:
    """Write a model bundle with RANDOM weights (the pipeline runs; the video is noise until trained)."""
    import torch

    from hyv.engine.bundle import init_random_bundle, save_bundle

    if (out / "bundle.json").exists() and not force:
        console.print(f"[yellow]{out} already holds a bundle; pass --force to overwrite.[/]")
        raise typer.Exit(0)
    try:
        bundle = init_random_bundle(preset, seed=seed, dtype=_dtype(dtype) or torch.float32)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    save_bundle(bundle, out)
    params = sum(p.numel() for p in bundle.dit.parameters())
    console.print(f"Wrote untrained bundle [bold]{preset}[/] to {out} (DiT: {params / 1e6:.1f}M parameters).")


def _refuse(message: str) -> NoReturn:
    """One red line on stderr (never wrapped, never read as markup), then exit code 2."""
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _check_device(device: str, option: str) -> None:
    """Refuse, before any weights load, a device this machine does not have (CUDA on a CPU build)."""
    from hyv.engine.devices import check_device

    try:
        check_device(device)
    except ValueError as exc:
        _refuse(f"error: {option} {device}: {exc}")


def _check_before_loading(
    request: GenerationRequest, limits: ModelLimits, weights: Path, text_encoder: Path | None
) -> None:
    """Refuse, before any weights load, what the model cannot do: a prompt with words outside its
    built-in text encoder's vocabulary (the message lists the grammar it follows), a size or a
    length it was not trained at (the message lists those it was)."""
    from hyv.engine.limits import resolve
    from hyv.engine.prompt_vocabulary import OffVocabularyError, bundle_prompt_vocabulary

    try:
        vocabulary = bundle_prompt_vocabulary(weights, text_encoder)
    except ValueError:  # an unreadable tokenizer: loading the text encoder says more
        vocabulary = None
    if vocabulary is not None:
        try:
            vocabulary.check(request.prompt, "prompt")
            if request.negative_prompt:
                vocabulary.check(request.negative_prompt, "negative_prompt", allow_empty=True)
        except OffVocabularyError as exc:
            grammar = vocabulary.grammar
            hint = grammar.describe() if grammar else f"the words {', '.join(vocabulary.sorted_words())}"
            _refuse(f"invalid request: {exc}; this model follows {hint}")
    try:
        resolve(request, limits)  # the step count is checked with the model loaded (a distilled schedule)
    except ValueError as exc:
        _refuse(f"invalid request: {exc}")


def _lora_files(options: list[str], sp: int) -> list[tuple[LoraChoice, Path | None]]:
    """--lora values -> (the request's choice, the file when a path was given)."""
    from pydantic import ValidationError

    from hyv.engine.lora_folder import LORA_SUFFIX, parse_lora_option
    from hyv.engine.request import LoraChoice
    from hyv.option_errors import option_error

    out: list[tuple[LoraChoice, Path | None]] = []
    for value in options:
        spec, scale = parse_lora_option(value)
        path = Path(spec) if spec.endswith(LORA_SUFFIX) or "/" in spec else None
        if path is not None:
            if not path.is_file():
                _refuse(f"error: --lora {value}: no such file {path}")
            if sp > 1:
                _refuse(f"error: --lora {value}: with --sp, name an adapter of the bundle's loras/ folder")
        try:
            choice = LoraChoice(name=path.name.removesuffix(LORA_SUFFIX) if path else spec, scale=scale)
        except ValidationError as exc:
            _refuse(f"error: --lora {value}: {option_error(exc, LoraChoice, {})}")
        out.append((choice, path))
    return out


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="MP4 file to write.")] = Path("outputs/video.mp4"),
    weights: Annotated[
        Path, typer.Option(help="Model bundle or HunyuanVideo release folder (Tencent's or diffusers').")
    ] = DEFAULT_BUNDLE_DIR,
    image: Annotated[Path | None, typer.Option(help="First frame for image-to-video.")] = None,
    width: Annotated[int | None, typer.Option(help="Width in pixels (multiple of 16).")] = None,
    height: Annotated[int | None, typer.Option(help="Height in pixels (multiple of 16).")] = None,
    frames: Annotated[int | None, typer.Option(help="Number of frames, 4n+1.")] = None,
    fps: Annotated[int | None, typer.Option(help="Frames per second of the MP4.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    negative_prompt: Annotated[str, typer.Option(help="Negative prompt (true-CFG models).")] = "",
    seed: Annotated[int | None, typer.Option(help="Random seed (default: random, printed).")] = None,
    sp: Annotated[
        int, typer.Option(help="Sequence-parallel processes on this machine (or run under torchrun).")
    ] = 1,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (default: bf16 on GPU).")] = None,
    dit_dtype: Annotated[
        str | None,
        typer.Option(help="fp8: the DiT's block linears in float8, half their memory (default: as stored)."),
    ] = None,
    text_encoder: Annotated[Path | None, typer.Option(help="HunyuanVideo text encoders (13B).")] = None,
    text_encoder_placement: Annotated[str, typer.Option(help=f"{TEXT_ENCODER_PLACEMENT_HELP}.")] = "device",
    model_offload: Annotated[
        bool,
        typer.Option("--model-offload", "--offload", help=f"{MODEL_OFFLOAD_HELP} (--offload: older name)."),
    ] = False,
    offload_blocks: Annotated[bool, typer.Option(help=f"{OFFLOAD_BLOCKS_HELP}.")] = False,
    compile: Annotated[bool, typer.Option(help="torch.compile the DiT blocks.")] = False,
    attention_backend: Annotated[str | None, typer.Option(help=f"{ATTENTION_BACKEND_HELP}.")] = None,
    vae_tile_size: Annotated[int | None, typer.Option(help=f"{VAE_TILE_SIZE_HELP}.")] = None,
    vae_tile_frames: Annotated[int | None, typer.Option(help=f"{VAE_TILE_FRAMES_HELP}.")] = None,
    vae_tile_overlap: Annotated[float | None, typer.Option(help=f"{VAE_TILE_OVERLAP_HELP}.")] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            help="LoRA adapter: a NAME from the bundle's loras/ folder or a PATH to a .safetensors, with "
            "an optional :SCALE (default 1.0); repeat it for several (their deltas add up).",
        ),
    ] = None,
    cache: Annotated[str, typer.Option(help="Step caching: off, teacache or first_block.")] = "off",
    cache_threshold: Annotated[
        float | None, typer.Option(help="The cache's threshold (default: the mode's; docs/step_cache.md).")
    ] = None,
) -> None:
    """Generate one video and write it as an MP4; prints one JSON line (path, stage seconds, memory)."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from hyv.engine.pipeline import PipelineOptions, VideoPipeline, default_device_and_dtype
    from hyv.engine.pipeline import Progress as StepProgress
    from hyv.engine.request import GenerationRequest
    from hyv.engine.step_cache import parse_cache
    from hyv.option_errors import option_error

    try:
        spec = read_bundle_spec(weights)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: a release this project cannot serve
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    try:
        image_bytes = image.read_bytes() if image is not None else None
    except OSError as exc:
        _refuse(f"error: --image {image}: {exc.strerror or exc}")
    lora_files = _lora_files(lora or [], sp)
    try:
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            image=image_bytes,
            width=width,
            height=height,
            num_frames=frames,
            fps=fps,
            steps=steps,
            guidance=guidance,
            seed=seed,
            loras=tuple(choice for choice, _ in lora_files),
            cache=parse_cache(cache, cache_threshold),
        )
    except ValueError as exc:  # pydantic's ValidationError included; parse_cache names the option's value
        if isinstance(exc, ValidationError):
            _refuse(f"error: {option_error(exc, GenerationRequest, GENERATE_OPTIONS)}")
        _refuse(f"error: --cache/--cache-threshold: {exc}")
    if device is not None:
        _check_device(device, "--device")
    _check_before_loading(request, spec.limits, weights, text_encoder)
    if not spec.trained:
        console.print(f"[yellow]{weights} holds untrained (random) weights: expect noise.[/]")
    default_device, default_dtype = default_device_and_dtype()
    try:
        tiles = VAETileSizes(vae_tile_size, vae_tile_frames, vae_tile_overlap)
        options = PipelineOptions(
            device=device or default_device,
            dtype=_dtype(dtype) or default_dtype,
            text_encoder=text_encoder_placement,  # type: ignore[arg-type]  # checked by PipelineOptions
            model_offload=model_offload,
            offload_blocks=offload_blocks,
            compile_blocks=compile,
            attention_backend=attention_backend,
            vae_tiling=None if tiles.is_default() else tiles,
            dit_dtype=dit_dtype,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from hyv.engine.parallel.launch import launched_by_torchrun

    if sp > 1 or launched_by_torchrun():  # torchrun: one process per GPU, world size from torchrun
        from hyv.engine.parallel.generate import generate_sequence_parallel

        summary = generate_sequence_parallel(weights, request, options, out, sp, text_encoder)
        print(json.dumps({"path": str(out), **summary}))
        return
    try:
        pipeline = VideoPipeline.from_dir(weights, options, text_encoder_path=text_encoder)
        for choice, path in lora_files:
            if path is not None:
                pipeline.loras.add_file(path, choice.name)
        pipeline.plan(request)
    except (ValueError, FileNotFoundError) as exc:
        _refuse(f"invalid request: {exc}")
    with Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(event: StepProgress) -> None:
            if event.stage not in ("denoise", "decode"):
                return
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total)
            bar.update(tasks[event.stage], completed=event.step, total=event.total)

        result = pipeline.generate(request, on_progress=on_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.mp4)
    print(json.dumps({"path": str(out), **result.summary()}))


@app.command()
def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="A HunyuanVideo release folder (Tencent's ckpts/ or the diffusers repository), "
            "or with --kind an official .pt/.safetensors or diffusers component directory."
        ),
    ],
    output: Annotated[Path, typer.Argument(help="Bundle (or, with --kind, component) directory to write.")],
    kind: Annotated[
        str | None,
        typer.Option(help="bundle, dit or vae (default: bundle for a release folder, else dit)."),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="fp32, bf16 or fp16 (default: bf16 for dit/vae; a bundle keeps the release's); fp8: the "
            "DiT's block linears in float8 with per-channel scales, the rest as by default."
        ),
    ] = None,
    link_text_encoders: Annotated[
        bool, typer.Option(help="Bundle: symlink the release's text encoders instead of copying them.")
    ] = False,
) -> None:
    """Convert a HunyuanVideo release into a model bundle, or one official/diffusers checkpoint into the
    project's own format."""
    from hyv.engine.release import find_release

    try:
        release = find_release(source) if source.is_dir() else None
    except (FileNotFoundError, ValueError) as exc:  # a release folder with a piece missing
        if kind not in ("dit", "vae"):
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
        release = None
    kind = kind or ("bundle" if release is not None else "dit")
    fp8 = dtype == "fp8"
    if fp8:
        if kind == "vae":
            raise typer.BadParameter("--dtype fp8 applies to the DiT only: fp32, bf16 or fp16 for the VAE")
        dtype = None if kind == "bundle" else "bf16"  # what is not quantized keeps the usual dtype
    if kind == "bundle":
        from hyv.engine.bundle import convert_release

        if release is None:
            console.print(f"[red]{source} is not a HunyuanVideo release folder[/]")
            raise typer.Exit(2)
        convert_release(
            source, output, dtype=_dtype(dtype), link_text_encoders=link_text_encoders, dit_fp8=fp8
        )
        console.print(f"Converted the {release.kind}-layout release {source} -> bundle {output}")
        return
    from hyv.models import load_dit, load_vae, save_dit, save_vae

    component_dtype = _dtype(dtype or "bf16")
    if kind == "dit":
        dit = load_dit(source, dtype=component_dtype)
        if fp8:
            from hyv.models.fp8 import quantize_dit_

            quantize_dit_(dit)
        save_dit(dit, output)
    elif kind == "vae":
        save_vae(load_vae(source, dtype=component_dtype), output)
    else:
        raise typer.BadParameter(f"--kind must be 'bundle', 'dit' or 'vae', got {kind!r}")
    console.print(f"Converted {kind} {source} -> {output}")


@app.command("calibrate-cache")
def calibrate_cache(
    weights: Annotated[
        Path, typer.Option(help="Model bundle to calibrate (its bundle.json gets the fit).")
    ] = (DEFAULT_BUNDLE_DIR),
    prompts: Annotated[int, typer.Option(help="Training captions of the built-in grammar to run.")] = 8,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the bundle's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the bundle's).")] = None,
    true_cfg: Annotated[
        bool | None,
        typer.Option(help="Two branches per step (default: when the DiT has no guidance embedding)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt (then +1 each).")] = 0,
    write: Annotated[bool, typer.Option(help="Store the coefficients in the bundle's bundle.json.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (default: bf16 on GPU).")] = None,
) -> None:
    """Fit the TeaCache polynomial of a model from its own uncached trajectories; prints one JSON line
    (coefficients, the fit's error) and stores it in the bundle (docs/step_cache.md)."""
    from hyv.engine.pipeline import default_device_and_dtype
    from hyv.engine.step_cache.calibrate import calibrate
    from hyv.training.data.grammar import training_captions

    if device is not None:
        _check_device(device, "--device")
    default_device, default_dtype = default_device_and_dtype()
    try:
        report = calibrate(
            weights,
            prompts=training_captions(prompts),
            steps=steps,
            guidance=guidance,
            true_cfg=true_cfg,
            seed=seed,
            write=write,
            device=device or default_device,
            dtype=_dtype(dtype) or default_dtype,
        )
    except (ValueError, FileNotFoundError) as exc:
        _refuse(f"error: {exc}")
    print(json.dumps(report))


def _settings(options: dict[str, str], **overrides: Any) -> Any:
    """Settings (HYV_* environment) with the command's options over them; exit 2 with one line
    naming the option (`options`: setting -> option) or variable that holds a bad value."""
    from pydantic import ValidationError

    from hyv.option_errors import option_error
    from hyv.service.settings import Settings

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        named = {field: option for field, option in options.items() if field in given}
        _refuse(f"error: {option_error(exc, Settings, named, lambda field: f'HYV_{field.upper()}')}")


def _named_after_the_model(settings: Any) -> Any:
    """The settings with model_name from the served bundle (unless set); exit 2 if none is there.
    Several models (HYV_MODELS, HYV_MODELS_DIR: hyv.service.served_models): exit 2 naming a bad entry."""
    from hyv.service.served_models import several_models, worker_model_sources

    if several_models(settings):
        try:
            sources = worker_model_sources(settings)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if settings.sp_degree > 1 and len(sources) > 1:
            typer.echo(
                f"error: a worker group (--sp {settings.sp_degree}) serves one model, not "
                f"{[s.name for s in sources]}: run one group per model (hyv worker --models NAME)",
                err=True,
            )
            raise typer.Exit(2)
        return settings
    try:
        spec = read_bundle_spec(settings.weights)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: a release this project cannot serve
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if "model_name" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"model_name": spec.name})


def _with_worker_models(settings: Any, option: str | None) -> Any:
    """`hyv worker --models a,b`: a choice among the served models when the settings name them
    (HYV_MODELS, HYV_MODELS_DIR), else the served models themselves."""
    from hyv.service.served_models import several_models

    if option is None:
        return settings
    names = [part.strip() for part in option.split(",") if part.strip()]
    if not names:
        raise typer.BadParameter(f"--models names no model: {option!r}")
    field = "worker_models" if several_models(settings) else "models"
    return settings.model_copy(update={field: names})


# The option of `hyv serve` and `hyv worker` that sets each setting (for error messages).
SERVE_OPTIONS = {
    "host": "--host",
    "port": "--port",
    "data_dir": "--data-dir",
    "weights": "--weights",
    "redis_url": "--redis-url",
    "sp_degree": "--sp",
    "sp_mode": "--sp-mode",
    "models": "--models",
}
WORKER_OPTIONS = {
    "redis_url": "--redis-url",
    "weights": "--weights",
    "data_dir": "--data-dir",
    "device": "--device",
    "sp_degree": "--sp",
    "sp_mode": "--sp-mode",
    "sp_ulysses_degree": "--ulysses-degree",
    "text_encoder_placement": "--text-encoder-placement",
    "model_offload": "--model-offload",
    "offload_blocks": "--offload-blocks",
    "compile_dit": "--compile",
    "attention_backend": "--attention-backend",
    "vae_tile_size": "--vae-tile-size",
    "vae_tile_frames": "--vae-tile-frames",
    "vae_tile_overlap": "--vae-tile-overlap",
}


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (HYV_HOST; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (HYV_PORT; default 8000).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Videos, Redis data and metrics (HYV_DATA_DIR; default ./data).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Model bundle or HunyuanVideo release folder (HYV_WEIGHTS).")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes to start (one per GPU; 0 = API only, with HYV_REDIS_URL).")
    ] = 1,
    models: Annotated[
        str | None,
        typer.Option(
            help="Serve several models, the default first: bundled names (hyv-small,hyv-small-teacher), "
            "bundle paths or NAME=PATH, comma separated (HYV_MODELS; or HYV_MODELS_DIR). Every worker "
            "holds all of them."
        ),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis instead of starting one (HYV_REDIS_URL).")
    ] = None,
    sp: Annotated[
        int | None,
        typer.Option(
            help="Devices per worker: each worker is a sequence-parallel group of N processes "
            "(HYV_SP_DEGREE; see `hyv worker --help`)."
        ),
    ] = None,
    sp_mode: Annotated[
        str | None, typer.Option(help="ulysses, ring or usp (HYV_SP_MODE; default usp).")
    ] = None,
) -> None:
    """Serve the video API: starts Redis (unless HYV_REDIS_URL), the workers and the API together."""
    from hyv.service.launcher import serve as run_serve

    settings = _settings(
        SERVE_OPTIONS,
        host=host,
        port=port,
        data_dir=data_dir,
        weights=weights,
        redis_url=redis_url,
        sp_degree=sp,
        sp_mode=sp_mode,
        models=models,
    )
    settings = _named_after_the_model(settings)
    if workers < 0 or (workers == 0 and not settings.redis_url):
        raise typer.BadParameter(f"--workers must be >= 1 (or 0 with HYV_REDIS_URL), got {workers}")
    if settings.device != "cpu":
        from hyv.service.launcher import worker_gpus

        try:  # several workers split this machine's GPUs: enough of them?
            worker_gpus(0, workers, settings.sp_degree, os.environ.get("CUDA_VISIBLE_DEVICES"))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    run_serve(settings, workers)


@app.command()
def worker(
    redis_url: Annotated[str | None, typer.Option(help="The API's Redis (HYV_REDIS_URL).")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Model bundle or HunyuanVideo release folder (HYV_WEIGHTS).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Shared storage folder (HYV_DATA_DIR).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (HYV_DEVICE).")] = None,
    name: Annotated[str, typer.Option(help="Worker name (Celery hostname prefix).")] = "worker",
    models: Annotated[
        str | None,
        typer.Option(
            help="The models this worker loads and takes jobs for, comma separated: names among the "
            "served ones (HYV_MODELS / HYV_MODELS_DIR, as the API has them; HYV_WORKER_MODELS), or, "
            "when those are unset, the models themselves (bundled names, paths or NAME=PATH)."
        ),
    ] = None,
    sp: Annotated[
        int | None,
        typer.Option(
            help="Devices this worker owns (1, 2, 4, 8): a sequence-parallel group of one process "
            "per device, cuda:0..N-1 of CUDA_VISIBLE_DEVICES (HYV_SP_DEGREE)."
        ),
    ] = None,
    sp_mode: Annotated[
        str | None,
        typer.Option(help="ulysses (heads split), ring, or usp: ulysses inside, ring across (HYV_SP_MODE)."),
    ] = None,
    ulysses_degree: Annotated[
        int | None, typer.Option(help="usp's ulysses degree (HYV_SP_ULYSSES_DEGREE; default: widest).")
    ] = None,
    text_encoder_placement: Annotated[
        str | None, typer.Option(help=f"{TEXT_ENCODER_PLACEMENT_HELP} (HYV_TEXT_ENCODER_PLACEMENT)")
    ] = None,
    model_offload: Annotated[
        bool | None,
        typer.Option("--model-offload/--no-model-offload", help=f"{MODEL_OFFLOAD_HELP} (HYV_MODEL_OFFLOAD)"),
    ] = None,
    offload_blocks: Annotated[
        bool | None,
        typer.Option(
            "--offload-blocks/--no-offload-blocks", help=f"{OFFLOAD_BLOCKS_HELP} (HYV_OFFLOAD_BLOCKS)"
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the DiT blocks, compiled at start (HYV_COMPILE_DIT).",
        ),
    ] = None,
    attention_backend: Annotated[
        str | None, typer.Option(help=f"{ATTENTION_BACKEND_HELP} (HYV_ATTENTION_BACKEND)")
    ] = None,
    vae_tile_size: Annotated[
        int | None, typer.Option(help=f"{VAE_TILE_SIZE_HELP} (HYV_VAE_TILE_SIZE)")
    ] = None,
    vae_tile_frames: Annotated[
        int | None, typer.Option(help=f"{VAE_TILE_FRAMES_HELP} (HYV_VAE_TILE_FRAMES)")
    ] = None,
    vae_tile_overlap: Annotated[
        float | None, typer.Option(help=f"{VAE_TILE_OVERLAP_HELP} (HYV_VAE_TILE_OVERLAP)")
    ] = None,
) -> None:
    """Run one GPU worker (production): takes jobs of the served model from Redis. Options override
    the settings (HYV_* environment)."""
    from hyv.service.launcher import run_worker

    settings = _settings(
        WORKER_OPTIONS,
        redis_url=redis_url,
        weights=weights,
        data_dir=data_dir,
        device=device,
        sp_degree=sp,
        sp_mode=sp_mode,
        sp_ulysses_degree=ulysses_degree,
        text_encoder_placement=text_encoder_placement,
        model_offload=model_offload,
        offload_blocks=offload_blocks,
        compile_dit=compile,
        attention_backend=attention_backend,
        vae_tile_size=vae_tile_size,
        vae_tile_frames=vae_tile_frames,
        vae_tile_overlap=vae_tile_overlap,
    )
    settings = _with_worker_models(settings, models)
    if not settings.redis_url:
        raise typer.BadParameter("hyv worker needs --redis-url or HYV_REDIS_URL")
    if settings.device is not None:
        _check_device(settings.device, "--device" if device is not None else "HYV_DEVICE")
    settings = _named_after_the_model(settings)
    if settings.sp_degree > 1:
        from hyv.service.worker_group import check_layout

        try:
            check_layout(settings)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    run_worker(settings, name)
