"""Sequence parallelism for the HunyuanVideo DiT (Ulysses, Ring, USP) and the VAE decode.

Typical use on every rank (see `launch.run_sequence_parallel` for starting the ranks):

    groups = init_sequence_parallel(SPConfig(ulysses_degree=2, ring_degree=2), model.config.num_heads)
    dit = SequenceParallelDiT(model, groups)       # same call and output as the model
    video = sp_decode(vae, latents)                # = vae.decode(latents, tiled=True)

`hyv generate --sp N` runs `hyv.engine.parallel.generate.generate_sequence_parallel` (not imported
here: it pulls in the pipeline).
"""

from hyv.engine.parallel.attention import USPAttention, attention_with_lse, merge_partials, ring_attention
from hyv.engine.parallel.dit import SequenceParallelDiT, sp_forward
from hyv.engine.parallel.groups import (
    SPConfig,
    SPGroups,
    default_backend,
    init_process_group_from_env,
    init_sequence_parallel,
)
from hyv.engine.parallel.launch import run_sequence_parallel, spawn_sequence_parallel
from hyv.engine.parallel.vae import SequenceParallelVAE, sp_decode, sp_iter_decode

__all__ = [
    "SPConfig",
    "SPGroups",
    "SequenceParallelDiT",
    "SequenceParallelVAE",
    "USPAttention",
    "attention_with_lse",
    "default_backend",
    "init_process_group_from_env",
    "init_sequence_parallel",
    "merge_partials",
    "ring_attention",
    "run_sequence_parallel",
    "sp_decode",
    "sp_forward",
    "sp_iter_decode",
    "spawn_sequence_parallel",
]
