"""Per-rank plans of the recipes that move tensors (smmf_plan.dist: accumulation, a quantized base,
offload): every figure below is counted by hand from the engines' rules on models small enough to
count (raw allocator: no rounding; on the host the CPU allocator's 64-B blocks, and on a CUDA
plan the pinned blocks' powers of two), never taken from the planner under test. The command line's refusals and JSON
are checked in test_cli_recipe.py, the packed storage against bitsandbytes in test_quantize_bnb.py."""

from __future__ import annotations

import pytest

from smmf_plan.dist import Context, Sharding, plan_ranks
from smmf_plan.dist import quantized as dq
from smmf_plan.dist.fsdp2 import unsynced_grad_bytes
from smmf_plan.errors import PlanError
from smmf_plan.memory import HOST_RUNTIME
from smmf_plan.optimizers import parse
from smmf_plan.recipe import Recipe
from smmf_plan.shapes import ParamSpec

ADAM = parse("adam")
RUNTIME = HOST_RUNTIME["pytorch"]  # one rank's process on the host (no model library)
#: two blocks and a root layer whose 3 rows shard unevenly at world 2 (rank 0: 2 rows, rank 1: 1)
SMALL = (ParamSpec("layers.0.weight", (8, 4)), ParamSpec("layers.1.weight", (8, 4)),
         ParamSpec("head.weight", (3, 4)))


def ctx(specs=SMALL, **recipe) -> Context:
    return Context(tuple(specs), "raw", recipe=Recipe(**recipe))


def figures(c: Context, sharding: Sharding, optimizer=ADAM) -> dict:
    """rank range → figures, for every class."""
    return {cl.ranges: cl.figures for cl in plan_ranks(c, sharding, optimizer)}


def host(f) -> dict:
    return dict(f.host)


# ------------------------------------------------------------------ gradient accumulation
def test_fsdp2_accumulation_adds_one_fresh_reduce_scatter_output():
    """World 2, fp32. Per unit: a block (8, 4) gathers 2 × 4 rows × 4 cols × 4 B = 128 B, its
    unsharded gradient is 128 B, its reduce-scatter input 128 B, output (the sharded gradient)
    64 B; the root (3, 4) gathers 2 × 2 rows × 16 B = 64 B and stays gathered. Peak without
    accumulation: backward of layers.1 with layers.0 prefetched = 128 + 128 + 128 + 128 = 512, plus
    the root 64 → 576. With accumulation the fresh output (64 B) joins → 640. The sharded
    gradients (64 + 64 + 32) are kept either way."""
    one = figures(ctx(), Sharding("fsdp2", 2))
    four = figures(ctx(grad_accum=4), Sharding("fsdp2", 2))
    assert [f.comm for f in one.values()] == [576, 576]
    assert [f.comm for f in four.values()] == [640, 640]
    assert [f.grads for f in four.values()] == [160, 160]
    assert [f.state_bytes for f in four.values()] == [f.state_bytes for f in one.values()]
    # set_requires_gradient_sync(False) would keep every unsharded gradient: (32 + 32 + 12) × 4 B
    assert unsynced_grad_bytes(ctx(grad_accum=4)) == 304


@pytest.mark.parametrize("scheme", ["ddp", "zero1", "zero2", "zero3"])
def test_ddp_and_zero_accumulate_in_the_buffers_they_have(scheme):
    """no_sync() keeps DDP's whole gradients in .grad; ZeRO accumulates into its own partitions:
    every rank's figures are those of one micro-step."""
    s = Sharding(scheme, 2)
    assert figures(ctx(grad_accum=8), s) == figures(ctx(), s)


# ------------------------------------------------------------------ quantized base
#: a LoRA'd block over a bf16 base: q (64, 32) is quantized, its adapters train in fp32, the
#: embedding (10, 32) stays bf16.
QLORA = (ParamSpec("layers.0.q.weight", (64, 32), "bfloat16", False),
         ParamSpec("layers.0.q.lora_A.weight", (4, 32)),
         ParamSpec("layers.0.q.lora_B.weight", (64, 4)),
         ParamSpec("embed.weight", (10, 32), "bfloat16", False))
Q = {"layers.0.q.weight": (64, 32)}


def qlora_ctx(scheme: str, quant: str = "nf4", amp: str | None = "bfloat16") -> Context:
    recipe = Recipe(quantize_base=quant, amp=amp)
    params, state = dq.engine_tensors(QLORA, Q, recipe, scheme, amp)
    return Context(tuple(params), "raw", sum(t.nbytes for t in state), amp, recipe=recipe)


def test_quantized_base_storage_per_scheme():
    """2,048 weights in nf4: 1,024 B of codes (uint8 (1024, 1); in bf16 storage (512, 1)), absmax
    2048 / 64 = 32 fp32 (128 B), the 16-entry code book (64 B): the state, whole on every rank."""
    for scheme in ("ddp", "zero1", "zero2"):
        c = qlora_ctx(scheme)
        packed = next(p for p in c.specs if p.name == "layers.0.q.weight")
        assert (packed.shape, packed.dtype, c.buffer_bytes) == ((1024, 1), "uint8", 192)
    for scheme in ("fsdp2", "zero3"):
        c = qlora_ctx(scheme)
        packed = next(p for p in c.specs if p.name == "layers.0.q.weight")
        assert (packed.shape, packed.dtype, c.buffer_bytes) == ((512, 1), "bfloat16", 192)
    # without --amp the storage is the base's own dtype
    params, _ = dq.engine_tensors(QLORA, Q, Recipe(quantize_base="nf4"), "fsdp2", None)
    assert params[0].shape == (512, 1) and params[0].dtype == "bfloat16"


def test_quantized_base_weights_per_rank():
    """World 2, AMP bf16 (ZeRO's model in bf16; FSDP2's sharded parameters as stored).
    ddp: codes 1,024 + state 192 + adapters (128 + 256) × 4 = 1,536 + embedding 640 = 3,392.
    zero2: the bit16 flat buffer of the adapters, 384 elements (a multiple of 2·2) × 2 B = 768,
    frozen parameters whole in bf16 (codes 1,024 + embedding 640), state 192 = 2,624.
    zero3 (no persistent parameters): adapters ⌈128/2⌉ + ⌈256/2⌉ = 192 elements × 2 B = 384,
    frozen partitions ⌈512/2⌉ × 2 + ⌈320/2⌉ × 2 = 512 + 320, state 192 = 1,408.
    fsdp2: dim-0 chunks — codes (256, 1) bf16 = 512, lora_A (2, 32) fp32 = 256, lora_B (32, 4)
    fp32 = 512, embedding (5, 32) bf16 = 320, state 192 = 1,792."""
    expected = {"ddp": 3392, "zero2": 2624, "zero3": 1408, "fsdp2": 1792}
    for scheme, weights in expected.items():
        s = Sharding(scheme, 2, param_persistence_threshold=0)
        got = {f.weights for f in figures(qlora_ctx(scheme), s).values()}
        assert got == {weights}, scheme
    # the adapters' gradients are what DDP keeps: (128 + 256) × 4 B
    assert {f.grads for f in figures(qlora_ctx("ddp"), Sharding("ddp", 2)).values()} == {1536}


def test_int8_base_cannot_be_sharded_but_is_replicated():
    for scheme in ("fsdp2", "zero3"):
        with pytest.raises(PlanError, match="no floating storage"):
            qlora_ctx(scheme, quant="int8")
    c = qlora_ctx("ddp", quant="int8")  # int8 (64, 32) + SCB 64 fp32
    assert next(p for p in c.specs if p.name == "layers.0.q.weight").dtype == "int8"
    assert c.buffer_bytes == 256


# ------------------------------------------------------------------ offload
def test_fsdp2_cpu_offload_policy_per_rank():
    """World 2, fp32, CPUOffloadPolicy. Device: no parameters, gradients or state; per unit the
    shards copied in for the all-gather join it (block 64 B, root 32 B) and the reduce-scatter
    output lives until copied out (block 64 B, root 32 B): peak = backward of layers.1 with
    layers.0 prefetched, 128 + 128 + 128 + 128 + 64 = 576, plus the root 64 → 640.
    Host, pinned: the padded shards 64 + 64 + 32; the gradients' local shards 64 + 64 + 32 on
    rank 0, 64 + 64 + 16 on rank 1. Host state (64-B CPU blocks): the
    moments of (4, 4), (4, 4) and (2, 4) | (1, 4) rows → 2 × (64 + 64 + 64) + 3 steps × 64 = 576;
    logical 2 × (64 + 64 + 32) + 12 = 332 | 2 × (64 + 64 + 16) + 12 = 300."""
    got = figures(ctx(offload="optimizer"), Sharding("fsdp2", 2))
    assert list(got) == [((0, 0),), ((1, 1),)]
    r0, r1 = got.values()
    for f in (r0, r1):
        assert (f.weights, f.grads, f.state_allocated, f.step_temp, f.comm) == (0, 0, 0, 0, 640)
        assert host(f)["host_state"] == 576 and host(f)["host_runtime"] == RUNTIME
    assert (host(r0)["host_copies"], host(r1)["host_copies"]) == (320, 304)
    assert (r0.state_bytes, r1.state_bytes) == (332, 300)
    # the same policy for both spellings
    assert figures(ctx(offload="optimizer+grads"), Sharding("fsdp2", 2)) == got


def test_zero_offload_stage2_per_rank_and_with_accumulation():
    """World 2, fp32: 32 + 32 + 12 = 76 elements (a multiple of 2·2), partitions of 38.
    Device: the flat model 76 × 4 = 304, the reduce bucket 5e8 × 4 B plus the GPU staging buffer
    of the largest parameter (32 × 4 = 128); no master, gradient, state or step there.
    Host: the CPU staging buffer 128, the fp32 master and its gradient and the bit16 partition
    copy, 152 B each: 584. State on flat (38,) fp32: 2 × 152 → 192 each (64-B blocks) + step 64 =
    448. With accumulation each rank also stages the whole parameters its partition touches: rank
    0 [0, 38) → layers.0 and layers.1, 128 + 128; rank 1 [38, 76) → layers.1 and head, 128 + 48.
    On a CUDA plan the pinned blocks are powers of two: 128 + 3 × 256 = 896, and the staged
    copies 128 + 128 | 128 + 64."""
    got = figures(ctx(offload="optimizer"), Sharding("zero2", 2))
    (f,) = got.values()
    assert (f.weights, f.master, f.grads, f.state_allocated, f.step_temp) == (304, 0, 0, 0, 0)
    assert f.comm == 500_000_000 * 4 + 128
    assert (host(f)["host_copies"], host(f)["host_state"]) == (584, 448)
    acc = figures(ctx(offload="optimizer", grad_accum=2), Sharding("zero2", 2))
    assert {r: host(x)["host_copies"] for r, x in acc.items()} == {((0, 0),): 840, ((1, 1),): 760}
    cuda = Context(SMALL, "cuda", recipe=Recipe(offload="optimizer", grad_accum=2))
    got = {r: host(x)["host_copies"] for r, x in figures(cuda, Sharding("zero2", 2)).items()}
    assert got == {((0, 0),): 1152, ((1, 1),): 1088}


def test_zero_offload_stage3_per_rank():
    """World 2, fp32, no persistent parameters: ⌈32/2⌉ + ⌈32/2⌉ + ⌈12/2⌉ = 38 elements per rank
    in one sub-group (152 B on the device). Host: the flat gradient-partition buffer, the fp32
    master and its gradient, 152 B each: 456."""
    (f,) = figures(ctx(offload="optimizer"),
                   Sharding("zero3", 2, param_persistence_threshold=0)).values()
    assert (f.weights, f.master, f.grads, f.state_allocated) == (152, 0, 0, 0)
    assert (host(f)["host_copies"], host(f)["host_state"]) == (456, 448)
