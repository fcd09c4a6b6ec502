"""SMMF under FSDP2 and DDP, exactly: real gloo ranks on CPU against single-process SMMF.

The ranks (tests/sharded_smmf.py) run FSDP2 at world 2 and 4 with uneven dim-0 shards (a 251-row
layer; a 3-row layer that leaves rank 3 of 4 empty), DDP and a bf16 ``MixedPrecisionPolicy`` at
world 2, count the collectives of every ``optimizer.step()``, and save a DCP checkpoint at world 2
that world 4 resumes. Expected values come from single-process SMMF runs and from the
``torch.chunk`` rule written out here, never from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from filelock import FileLock

import sharded_smmf as S
from smmf_plan.optim.sharded import segments
from smmf_plan.shapes import square_matricize

#: fp32 rounding after a dozen steps (measured: ≤ 1e-6; a sharding bug moves parameters by ~lr)
TOL = 1e-5


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _rows(d0: int, world: int, rank: int) -> int:
    """FSDP2's dim-0 rule (``torch.chunk``): ⌈d0/W⌉ rows per rank, trailing ranks short or empty."""
    chunk = -(-d0 // world)
    return max(0, min(d0, (rank + 1) * chunk) - rank * chunk)


def _planned_state_bytes(shape: tuple[int, ...], world: int, rank: int, other: bool = False) -> int:
    """The design's per-rank state: fp32 factors of the full (n̂, m̂) matrix for both moments and
    the packed sign of the local elements (⌈k/8⌉ bytes). ``other`` (:data:`S.OTHER`): a ``bool``
    sign (k bytes), and vectors keep two fp32 moments of their local shard (8·k bytes)."""
    n, m = square_matricize(shape)
    local = _rows(shape[0], world, rank) * math.prod(shape[1:])
    if not other:
        return 4 * 2 * (n + m) + -(-local // 8)
    return 8 * local if len(shape) == 1 else 4 * 2 * (n + m) + local


@pytest.fixture(scope="session")
def runs(tmp_path_factory, worker_id):
    """The ranks' results, spawned once per session (under xdist the first worker runs them in a
    folder every worker shares; the others wait on the lock and read its files)."""
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "sharded-smmf"
    with FileLock(str(root) + ".lock"):
        if not (root / "done").exists():
            root.mkdir(exist_ok=True)
            for world in (2, 4):
                (root / f"w{world}").mkdir(exist_ok=True)
                S.spawn(world, str(root / f"w{world}"), str(root / "ckpt-world2"))
            (root / "done").touch()
    return {world: [torch.load(root / f"w{world}" / f"rank{r}.pt") for r in range(world)]
            for world in (2, 4)}


def test_sharded_smmf_follows_single_process(runs):
    """One test (one set of spawned ranks): xdist would otherwise start them once per worker."""
    ref_losses, ref_params = S.reference()
    shapes = [tuple(p.shape) for p in S.build_model().parameters()]
    names = [n for n, _ in S.build_model().named_parameters()]

    for world, ranks in runs.items():
        for rank, res in enumerate(ranks):
            fsdp = res["fsdp"]
            # FSDP2 sharded the way the plan assumes, including rank 3's empty shards at world 4
            assert fsdp["rows"] == {n: _rows(s[0], world, rank) for n, s in zip(names, shapes)}
            # the trajectory of single-process SMMF, on every rank
            assert max(abs(a - b) for a, b in zip(fsdp["losses"], ref_losses)) < TOL, (world, rank)
            assert _max_diff(fsdp["params"], ref_params) < TOL, (world, rank)
            # one fused all-reduce per step, nothing else
            assert fsdp["counts"] == [{"c10d.allreduce_": 1}] * S.STEPS, (world, rank)
            # state bytes per rank: replicated factors + the local packed sign
            assert fsdp["state_bytes"] == {
                n: _planned_state_bytes(s, world, rank) for n, s in zip(names, shapes)}, (world, rank)
    assert any(r == 0 for r in runs[4][3]["fsdp"]["rows"].values())  # an empty shard was stepped
    # fused=True cannot be honoured on DTensor parameters: a RuntimeError, never a silent fallback
    assert all("DTensor" in r["fused_error"] for ranks in runs.values() for r in ranks)

    for rank, res in enumerate(runs[2]):
        ddp = res["ddp"]
        assert max(abs(a - b) for a, b in zip(ddp["losses"], ref_losses)) < TOL
        assert _max_diff(ddp["params"], ref_params) < TOL


def test_bf16_mixed_precision_policy(runs):
    """With ``MixedPrecisionPolicy(bf16, fp32)`` the optimizer sees fp32 shards and fp32 gradients:
    the first gradient is exactly the mean of the micro-batches' bf16 gradients, and single-process
    SMMF given the run's gradients ends on the run's parameters. (The whole bf16 trajectory is not
    compared with a single process: a 1-ulp fp32 difference can round a weight to another bf16
    value, which then changes the next gradient by a bf16 ulp.)"""
    ranks = runs[2]
    model = S.build_model()
    x, y = S.batches()
    S.bf16_grads(model, x[0], y[0], world=2)
    for res in ranks:
        bf16 = res["bf16"]
        assert _max_diff(bf16["grads"][0], [p.grad for p in model.parameters()]) == 0.0
        assert _max_diff(bf16["params"], S.replay(bf16["grads"])) < TOL


@pytest.mark.parametrize("variant", ["default", "other"])
def test_dcp_checkpoint_saved_at_world_2_resumes_at_world_4(runs, variant):
    """Packed signs (as uint8 DTensors where rows are whole bytes, as bool where they are not) and
    bool signs, dense-path moments and coupled weight decay (``other``)."""
    other = variant == "other"
    ref_losses, ref_params = S.reference(**(S.OTHER if other else {}))
    shapes = [tuple(p.shape) for p in S.build_model().parameters()]
    names = [n for n, _ in S.build_model().named_parameters()]
    if other:
        for rank, res in enumerate(runs[2]):  # the world-2 run that saved it
            run = res["other"]
            assert max(abs(a - b) for a, b in zip(run["losses"], ref_losses)) < TOL
            assert _max_diff(run["params"], ref_params) < TOL
            assert run["state_bytes"] == {
                n: _planned_state_bytes(s, 2, rank, other) for n, s in zip(names, shapes)}
    for rank, res in enumerate(runs[4]):
        resumed = res["resumed-" + variant]
        assert max(abs(a - b) for a, b in zip(resumed["losses"], ref_losses[S.RESUME_AT:])) < TOL
        assert _max_diff(resumed["params"], ref_params) < TOL
        # loaded state is this rank's local state in the optimizer's storage (not bool or float
        # where packed, not the world-2 shards)
        assert resumed["state_bytes"] == {
            n: _planned_state_bytes(s, 4, rank, other) for n, s in zip(names, shapes)}


def test_hsdp_two_replicas_of_two_shards(runs):
    """A 2-D mesh (replicate, shard): the factors' all-reduce spans the shard group only."""
    ref_losses, ref_params = S.reference()
    shapes = [tuple(p.shape) for p in S.build_model().parameters()]
    names = [n for n, _ in S.build_model().named_parameters()]
    for rank, res in enumerate(runs[4]):
        hsdp = res["hsdp"]
        assert max(abs(a - b) for a, b in zip(hsdp["losses"], ref_losses)) < TOL
        assert _max_diff(hsdp["params"], ref_params) < TOL
        assert hsdp["counts"] == [{"c10d.allreduce_": 1}] * S.STEPS
        assert hsdp["state_bytes"] == {
            n: _planned_state_bytes(s, 2, rank % 2) for n, s in zip(names, shapes)}


@pytest.mark.parametrize("offset,numel,m", [
    (0, 12, 4), (2, 12, 4), (3, 1, 4), (5, 2, 4), (0, 0, 4), (4, 8, 4), (7, 30, 8), (6, 1, 7),
])
def test_segments_cover_the_local_range_row_by_row(offset, numel, m):
    covered = []
    for row, col, height, width, at in segments(offset, numel, m):
        assert 0 <= col and col + width <= m and height >= 1 and width >= 1
        assert height == 1 or (col == 0 and width == m)  # only whole rows stack
        for i in range(height * width):
            flat = (row + i // width) * m + col + i % width
            covered.append((flat, at + i))
    assert covered == [(offset + j, j) for j in range(numel)]


@pytest.mark.parametrize("local_rows", [0, 1, 2])
def test_a_vector_shard_keeps_a_vectors_moments(local_rows):
    """``vector_reshape=False`` routes by the whole tensor: a 1-row shard of a (3,) bias is not a
    0-d tensor to factorize (it failed at world 2 before: the dense path found no moments)."""
    from smmf_plan.optimizers import parse
    from smmf_plan.shapes import ParamSpec

    state = parse("smmf:vector_reshape=false").shard_state(ParamSpec("b", (3,)), (local_rows,))
    assert [(t.name, t.shape, t.dtype) for t in state] == [
        ("exp_avg", (local_rows,), "float32"), ("exp_avg_sq", (local_rows,), "float32")]
