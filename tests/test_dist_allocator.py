"""The allocator part of per-rank plans (smmf_plan.dist.allocation): the one-process allocator model
fed with each rank's own blocks. DDP at world 1 is the one-process plan part by part (its buckets
aside); glibc's part is there on a CPU device; the CUDA caching allocator's part is reserved minus
allocated, checked by hand on a model small enough to count its segments."""

from __future__ import annotations

import pytest
import torch

from cli_run import isolated_cache  # noqa: F401 - an autouse fixture: the test's own shape cache
from smmf_plan.allocators.sequence import StepLog
from smmf_plan.dist import Sharding, estimate
from smmf_plan.dist.allocation import rank_log
from smmf_plan.dist.ranks import RankBlocks
from smmf_plan.memory import estimate as one_process
from smmf_plan.memory import spec_of_module
from smmf_plan.optimizers import parse_many

MiB = 1 << 20
INPUT = (3, 8, 8)


def make():
    """A hand-built image classifier (read as a timm model: it has a ``pretrained_cfg``) whose
    tensors all fit in one 2 MiB small-pool segment of the CUDA caching allocator."""
    with torch.device("meta"):
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4))
    m.pretrained_cfg, m.num_classes = {}, 4
    return m


def _plans(scheme: str, world: int, allocator: str):
    spec = spec_of_module(make(), "tiny")
    kw = dict(batch_size=2, input_size=INPUT, module_factory=make, allocator=allocator)
    return (one_process(spec, parse_many("adam,smmf"), **kw),
            estimate(spec, parse_many("adam,smmf"), Sharding(scheme, world), **kw))


@pytest.mark.parametrize("allocator", ["glibc", "glibc-mmap"])
def test_ddp_at_world_1_is_the_one_process_plan_but_for_its_buckets(allocator):
    single, ranked = _plans("ddp", 1, allocator)
    for oid in ("adam", "smmf"):
        [step] = ranked.rank_steps(oid)
        mine, theirs = step.breakdown, single.breakdowns[oid]
        assert mine["comm"] > 0 == theirs["comm"]  # DDP's gradient bucket, a second gradient copy
        assert {k: v for k, v in mine.items() if k != "comm"} == {
            k: v for k, v in theirs.items() if k != "comm"}
        assert step.total_bytes == theirs.total_bytes + mine["comm"] == sum(mine.values())
        if allocator == "glibc":  # glibc's retained heap is there, as in one process
            assert mine["allocator"] > 0
        else:
            assert mine["allocator"] == 0


@pytest.mark.parametrize("scheme", ["ddp", "fsdp2"])
def test_glibc_part_of_every_rank_on_a_cpu_device(scheme):
    _, ranked = _plans(scheme, 2, "cpu")  # a CPU device's family: default glibc
    assert ranked.allocator == "glibc"
    for oid in ("adam", "smmf"):
        for step in ranked.rank_steps(oid):
            assert step.breakdown["allocator"] > 0
            assert step.total_bytes == sum(step.breakdown.values())
        # the largest rank's figures are what the fit reads, the allocator part included
        assert ranked.breakdowns[oid] == ranked.largest(oid).breakdown
        assert ranked.total_at(oid)(2) == ranked.breakdowns[oid].device_bytes


@pytest.mark.parametrize("scheme,world", [("ddp", 1), ("ddp", 2), ("fsdp2", 1), ("fsdp2", 2)])
def test_cuda_part_is_reserved_minus_allocated_by_hand(scheme, world):
    """Segments, by hand (c10/cuda/CUDACachingAllocator.cpp): each GEMM thread's 32 MiB cuBLAS
    workspace is a large-pool segment of its own (32 MiB, a multiple of 2 MiB: no slack), the two
    1 MiB cuBLASLt workspaces fill one 2 MiB small-pool segment, and every other block of this
    model (weights, shards, gradients, buckets, state, activations, gathered units: a few KiB,
    each <= 1 MiB) shares a second 2 MiB small-pool segment. Reserved = 2 x 32 + 2 + 2 MiB on
    every rank, so each rank's total (tensors + allocator part + workspaces) is 68 MiB, and the
    allocator part is that segment's 2 MiB less the rank's tensors."""
    _, ranked = _plans(scheme, world, "cuda")
    assert ranked.runtime_parts == {"cublas_workspace": 2 * (32 + 1) * MiB}
    for oid in ("adam", "smmf"):
        for step in ranked.rank_steps(oid):
            b = step.breakdown
            tensors = sum(v for k, v in b.items() if k not in ("allocator", "runtime"))
            assert 0 < tensors < 2 * MiB
            assert b["allocator"] == 2 * MiB - tensors
            assert step.total_bytes == 68 * MiB


def test_rank_log_swaps_whole_gradients_for_the_ranks_own():
    """The traced step (blocks 0-2: an activation and two gradients) as an FSDP2 rank runs it:
    its transient (one block) allocated first and alive through backward, each whole gradient
    freed as soon as it is made (reduce-scattered) and its gradient shard kept to the next
    zero_grad."""
    log = StepLog(events=(100, 40, ~0, 40), grads=(1, 2), retained=(), forward_end=1)
    assert rank_log(log, RankBlocks(kept=(8,), grads=None, transient=())) is log
    got = rank_log(log, RankBlocks(kept=(8,), grads=(24,), transient=(300,)))
    # ids: 0 the transient, 1-3 the traced blocks, 4 the rank's gradient shard
    assert got.events == (300, 100, 40, ~2, ~1, 40, ~3, 24, ~0)
    assert got.grads == (4,) and got.forward_end == 2
    # DDP keeps the whole gradients: only the transients are added
    ddp = rank_log(log, RankBlocks(kept=(8,), grads=None, transient=(300,)))
    assert ddp.events == (300, 100, 40, ~1, 40, ~0) and ddp.grads == (2, 3)


def test_a_plan_without_allocator_parts_is_the_exact_one_less_that_part():
    """What the world search plans first, to rule a world out before any replay: every rank's
    parts as in the exact plan but the allocator part at 0, so its device bytes are a lower
    bound."""
    from smmf_plan.dist.estimate import basis_for, from_basis

    spec = spec_of_module(make(), "tiny")
    basis = basis_for(spec, "fsdp2", batch_size=2, input_size=INPUT, module_factory=make,
                      allocator="cpu")
    layouts, sharding = parse_many("adam,smmf"), Sharding("fsdp2", 2)
    exact = from_basis(basis, "tiny", layouts, sharding)
    bound = from_basis(basis, "tiny", layouts, sharding, allocator_parts=False)
    for oid in ("adam", "smmf"):
        for e, b in zip(exact.rank_steps(oid), bound.rank_steps(oid), strict=True):
            assert e.ranges == b.ranges and b.breakdown["allocator"] == 0 < e.breakdown["allocator"]
            assert {k: v for k, v in b.breakdown.items() if k != "allocator"} == {
                k: v for k, v in e.breakdown.items() if k != "allocator"}
            assert b.breakdown.device_bytes == e.breakdown.device_bytes - e.breakdown["allocator"]
