"""Step caching under sequence parallelism (gloo, 2 processes, Ulysses 2): every rank makes the
same decisions, and they are those of the single process on the whole video."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hyv.engine.parallel import SPConfig, init_sequence_parallel, sp_forward, spawn_sequence_parallel
from hyv.engine.step_cache import StepCacheConfig
from hyv.engine.step_cache.runner import StepCache
from tests.engine.test_parallel import SP_DIT, make_dit, make_inputs

# Change of the video input from one step to the next: tiny (a skip under any threshold below) or
# large (a recompute); the first and last steps always compute.
DELTAS = (0.0, 0.001, 0.001, 0.5, 0.001, 0.5, 0.001, 0.001)
EXPECTED = [True, False, False, True, False, True, False, True]  # computed, per step
CONFIGS = (
    StepCacheConfig(mode="teacache", threshold=0.05),
    StepCacheConfig(mode="first_block", threshold=0.05),
)


def _trajectory(config: StepCacheConfig, groups: Any | None) -> dict[str, Any]:
    """The decisions and outputs of one run over DELTAS, sequence-parallel if `groups`."""
    model = make_dit(0.1).requires_grad_(False)
    cache = StepCache(model).install()
    if groups is not None:
        cache.join_group(groups.world_group)
    inputs = make_inputs()
    noise = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(5))
    decisions, outputs = [], []
    with torch.inference_mode(), cache.trajectory(config, len(DELTAS)) as stats:
        x = inputs["hidden_states"]
        for delta in DELTAS:
            x = x + delta * noise
            step_inputs = {**inputs, "hidden_states": x}
            before = stats.computed
            out = model(**step_inputs) if groups is None else sp_forward(model, groups, **step_inputs)
            decisions.append(stats.computed > before)
            outputs.append(out)
    return {"decisions": decisions, "output": torch.stack(outputs), "stats": stats.summary()}


def _rank() -> list[dict[str, Any]]:
    groups = init_sequence_parallel(SPConfig(2, 1), SP_DIT.num_heads)
    return [_trajectory(config, groups) for config in CONFIGS]


@pytest.fixture(scope="module")
def ranks() -> list[list[dict[str, Any]]]:
    return spawn_sequence_parallel(_rank, 2, backend="gloo")


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_ranks_agree_with_each_other_and_the_single_process(
    ranks: list[list[dict[str, Any]]], index: int
) -> None:
    single = _trajectory(CONFIGS[index], None)
    assert single["decisions"] == EXPECTED
    rank0, rank1 = ranks[0][index], ranks[1][index]
    assert rank0["decisions"] == rank1["decisions"] == EXPECTED
    assert rank0["stats"] == rank1["stats"] == single["stats"]
    assert rank0["stats"]["skipped"] == EXPECTED.count(False)
    # The same video on every rank, equal to the single process's (within fp32 rounding of the
    # sharded attention; skipped steps add the same cached residual).
    assert torch.equal(rank0["output"], rank1["output"])
    torch.testing.assert_close(rank0["output"], single["output"], atol=2e-5, rtol=1e-5)
