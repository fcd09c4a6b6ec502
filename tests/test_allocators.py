"""Allocator models: the CUDA caching allocator's rules replayed exactly, the training-step
allocation sequence, the glibc bound's terms, and which model applies where.

Every expected figure is written out by hand from the rule it checks (c10/cuda/
CUDACachingAllocator.cpp; glibc malloc), never computed by the code under test."""

import pytest

from smmf_plan.allocators import caching, glibc, models
from smmf_plan.allocators.sequence import OptimizerStep, StepLog, training_sequence
from smmf_plan.devices import get_device
from smmf_plan.errors import PlanError

KiB, MiB = 1 << 10, 1 << 20


# --------------------------------------------------------------------------- caching allocator

@pytest.mark.parametrize("request_bytes, block", [
    (1, 512), (512, 512), (513, 1024), (4000, 4096), (MiB + 1, MiB + 512)])
def test_requests_round_up_to_512_bytes(request_bytes, block):
    assert caching.round_size(request_bytes) == block


@pytest.mark.parametrize("size, segment", [
    (512, 2 * MiB),              # small pool: 2 MiB segments
    (MiB, 2 * MiB),              # 1 MiB is still small
    (MiB + 512, 20 * MiB),       # large, under 10 MiB: a 20 MiB segment
    (10 * MiB - 512, 20 * MiB),
    (10 * MiB, 10 * MiB),        # from 10 MiB on: rounded up to 2 MiB
    (11 * MiB, 12 * MiB),
    (12 * MiB + 512, 14 * MiB),
])
def test_segment_sizes(size, segment):
    assert caching.allocation_size(size) == segment


def _peaks(events):
    return caching.replay(events)


def test_small_blocks_pack_into_2_mib_segments():
    # three 600 KiB blocks share one 2 MiB segment (each split off, the rest >= 512 B);
    # the fourth does not fit in the 2048 - 1800 = 248 KiB left: a second segment
    p = _peaks([600 * KiB] * 4)
    assert p.reserved == 4 * MiB and p.allocated == 2400 * KiB and p.segments == 2


def test_freed_neighbours_merge_and_serve_a_larger_request():
    # A and B (5 MiB each) are split from one 20 MiB segment; freed, they merge with the free
    # rest into 20 MiB again, so a 12 MiB request needs no new segment
    p = _peaks([5 * MiB, 5 * MiB, ~0, ~1, 12 * MiB])
    assert p.reserved == 20 * MiB and p.segments == 1
    assert p.allocated == 12 * MiB  # the 8 MiB rest is split off (more than 1 MiB)


def test_a_large_block_with_at_most_1_mib_left_is_handed_out_whole():
    # 11 MiB: a 12 MiB segment; the 1 MiB rest is not split (large pool: only a rest > 1 MiB is),
    # so the whole 12 MiB block counts as allocated
    p = _peaks([11 * MiB])
    assert p.reserved == 12 * MiB and p.allocated == 12 * MiB


def test_pools_never_share_blocks():
    # a freed 20 MiB large segment cannot serve a 4 KiB request: it gets a 2 MiB small segment
    p = _peaks([12 * MiB, ~0, 4 * KiB])
    assert p.reserved == 12 * MiB + 2 * MiB and p.segments == 2


def test_best_fit_takes_the_smallest_free_block():
    events = [5 * MiB, 15 * MiB,          # segment 0 (20 MiB): 5 + 15
              3 * MiB, 17 * MiB,          # segment 1 (20 MiB): 3 + 17
              ~0, ~2,                     # free: 5 MiB (segment 0), 3 MiB (segment 1)
              5 * MiB // 2, 5 * MiB]      # 2.5 MiB takes the 3 MiB block (smallest that fits; the
    p = _peaks(events)                    # 0.5 MiB rest stays in it), so 5 MiB still fits
    assert p.segments == 2 and p.reserved == 40 * MiB
    assert p.allocated == 15 * MiB + 17 * MiB + 3 * MiB + 5 * MiB  # the whole 3 MiB counts


def test_reserved_never_shrinks_and_the_peak_resets():
    # reset before the last allocation: the peaks are those from there on, but reserved
    # includes every segment made before (the freed 30 MiB one stays cached; a 4 KiB block
    # needs a small-pool segment of its own)
    p = caching.replay([30 * MiB, ~0, 4 * KiB], reset_at=2)
    assert p.reserved == 30 * MiB + 2 * MiB and p.allocated == 4 * KiB


def test_a_sequence_replayed_again_is_answered_from_the_cache(monkeypatch):
    # a plan replays one sequence per device of an allocator model: the second replay is the
    # first one's peaks, keyed on the whole sequence and where the peaks are reset
    calls = []
    fresh = caching._replay
    monkeypatch.setattr(caching, "_CACHE", type(caching._CACHE)())
    monkeypatch.setattr(caching, "_replay", lambda e, r: calls.append(r) or fresh(e, r))
    events = [30 * MiB, ~0, 4 * KiB]
    first = caching.replay(events, reset_at=2)
    assert caching.replay(list(events), reset_at=2) == first and calls == [2]
    assert first == caching.Peaks(allocated=4 * KiB, reserved=32 * MiB, segments=2)
    # another reset point or one event more: replayed afresh, their own peaks
    assert caching.replay(events, reset_at=0) == caching.Peaks(30 * MiB, 32 * MiB, 2)
    assert caching.replay(events + [~1], reset_at=2).allocated == 4 * KiB
    assert caching.replay([30 * MiB, ~0, 8 * KiB], reset_at=2).allocated == 8 * KiB
    assert calls == [2, 0, 2, 2]


def test_a_block_freed_twice_is_an_error():
    with pytest.raises(ValueError, match="block 0 is freed twice"):
        caching.replay([4 * KiB, ~0, ~0])


# --------------------------------------------------------------------------- the step sequence

def test_training_sequence_encodes_three_steps():
    # forward allocates an activation (id 0 of the log) and the gradient (id 1); backward frees
    # the activation; the output (id 2) is held until after the optimizer step
    log = StepLog((100, 8, 30, ~0), grads=(1,), retained=(2,), forward_end=3)
    step = OptimizerStep(state=((16, 16),), temps=((8,),), path="for-loop")
    seq = training_sequence([8], log, step, steps=3)
    w = 0  # the weight's block
    # step 1: activation 1, grad 2, output 3; free 1; state 4, 5; temp 6 freed; output freed
    s1 = [100, 8, 30, ~1, 16, 16, 8, ~6, ~3]
    # step 2: the last step's gradient freed first (zero_grad), then the same without state
    s2 = [~2, 100, 8, 30, ~7, 8, ~10, ~9]
    s3 = [~8, 100, 8, 30, ~11, 8, ~14, ~13]
    assert seq.events == [8] + s1 + s2 + s3 and w == 0
    # the last step is measured from after its zero_grad, as the measurement resets its peak
    assert seq.last_step_at == 1 + len(s1) + len(s2) + 1


# --------------------------------------------------------------------------- glibc

def test_largest_class_counts_the_largest_heap_block_size():
    # 24 MiB blocks three times; a 40 MiB block is above glibc's 32 MiB mmap cap (its own mapping,
    # returned when freed): not a heap block
    assert glibc.largest_class_bytes([40 * MiB, 24 * MiB, 5, 24 * MiB, 24 * MiB - 10]) == 3 * 24 * MiB
    assert glibc.largest_class_bytes([40 * MiB]) == 0


def test_a_size_class_recomputed_one_block_at_a_time_counts_its_live_blocks_three_times():
    # checkpointed backward: the 24 MiB block of each layer recomputed, used, freed, then the next
    # layer's (five times, never two alive together): the holes it leaves are refilled, so it
    # counts as three times its blocks alive at once, not five times
    one_at_a_time = [24 * MiB, ~0, 24 * MiB, ~1, 24 * MiB, ~2, 24 * MiB, ~3, 24 * MiB, ~4]
    assert glibc.live_at_once(one_at_a_time, 24 * MiB) == 1
    assert glibc.HOLES_PER_LIVE == 3
    assert glibc.largest_class_bytes([24 * MiB] * 5, one_at_a_time) == 3 * 24 * MiB
    # saved for backward: three alive together, freed in backward; five allocations stay five
    saved = [24 * MiB, 24 * MiB, 5, 24 * MiB, ~0, ~1, 24 * MiB - 10, ~3, 24 * MiB, ~2]
    assert glibc.live_at_once(saved, 24 * MiB) == 3 and glibc.live_at_once(saved, 64) == 1
    assert glibc.largest_class_bytes([24 * MiB] * 5, saved) == 5 * 24 * MiB


def test_the_heap_share_of_a_checkpointed_step_leaves_the_recomputed_blocks_out():
    # forward: a segment's input kept (8), its intermediates 4 and 6 freed at once (not saved),
    # the 40 MiB logits; backward: 4 and 6 recomputed, freed with the logits, a gradient (8) kept
    events = [8, 4, ~1, 6, ~2, 40 * MiB, 4, 6, ~3, ~4, 8, ~5]
    assert glibc.without_recomputation(events, forward_end=6) == [8, 4, 6, 40 * MiB, 8]
    # no recomputation: nothing left out
    assert glibc.without_recomputation([8, 4, ~1, 8], forward_end=4) == [8, 4, 8]


def test_forward_transients_count_half_the_small_blocks_forward_frees():
    # forward: a segment input kept (1 MiB), a 2 MiB and a 3 MiB intermediate freed in forward, an
    # 8 MiB one freed in forward (too large to count), a 2 MiB one freed only in backward (saved)
    events = [MiB, 2 * MiB, ~1, 3 * MiB, 8 * MiB, ~2, ~3, 2 * MiB, 2 * MiB, ~4, ~0]
    assert glibc.SMALL_TRANSIENT == 4 * MiB and glibc.TRANSIENT == 0.5
    assert glibc.forward_transients(events, forward_end=8) == (2 * MiB + 3 * MiB) // 2
    assert glibc.forward_transients([MiB, 2 * MiB, ~1, ~0], forward_end=2) == 0


def test_retained_is_the_larger_term():
    assert glibc.retained_bytes(100 * MiB, 10 * MiB) == int(glibc.SAME_SIZE * 100 * MiB)
    assert glibc.retained_bytes(MiB, 1000 * MiB) == int(glibc.CHURN * 1000 * MiB)


# --------------------------------------------------------------------------- which model where

@pytest.mark.parametrize("device, default, others", [
    ("rpi-zero", "glibc", {"glibc-mmap"}),
    ("512MiB", "glibc", {"glibc-mmap"}),
    ("t4", "cuda", set()),
    ("h200", "cuda", set()),
    ("jetson-orin-nano", "unified", set()),
    ("apple-m1-8gb", "mps", set()),
])
def test_each_device_gets_its_model(device, default, others):
    d = get_device(device)
    assert models.default_for(d).id == default == models.for_device(d).id
    assert {m.id for m in models.applicable(d)} == {default} | others


def test_a_model_that_cannot_describe_the_device_is_one_line():
    with pytest.raises(PlanError) as e:
        models.for_device(get_device("rpi-zero"), "cuda")
    assert "\n" not in str(e.value) and "glibc or glibc-mmap" in str(e.value)
    with pytest.raises(PlanError, match="did you mean glibc"):
        models.get_model("glibcc")


def test_runtime_terms_per_model():
    cuda = models.runtime_parts(models.CUDA, "timm")
    assert cuda == {"cublas_workspace": 2 * (32 + 1) * MiB}  # the host process is not on the GPU
    unified = models.runtime_parts(models.UNIFIED, "timm")
    assert unified["cublas_workspace"] == cuda["cublas_workspace"]
    assert unified["pytorch"] > models.runtime_parts(models.GLIBC, None)["pytorch"]  # CUDA build
    assert models.runtime_parts(models.GLIBC, "transformers") == {
        "pytorch": 350 * MiB, "library": 220 * MiB, "step_overhead": 44 * MiB}


def test_the_gpu_measurement_builds_and_steps_each_recipe_on_the_cpu(tmp_path, monkeypatch):
    """bench_memory.py --cuda measures runs that peak.run_steps builds; no GPU is available here,
    so the same code path runs on the CPU: only the LoRA adapters are handed to the optimizer,
    and two steps run with gradient checkpointing and bf16 autocast."""
    import json

    import torch

    from smmf_plan.peak import run_steps

    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                  "vocab_size": 128, "n_embd": 32, "n_layer": 2, "n_head": 4,
                                  "n_positions": 64}))
    calls = []
    opt = run_steps({"source": str(config), "optimizer": "adam", "batch_size": 2, "seq_len": 16,
                     "lora_rank": 4, "lora_targets": ["c_attn"], "grad_checkpointing": True,
                     "amp": "bf16", "steps": 2}, torch.device("cpu"), lambda: calls.append(1))
    params = [p for g in opt.param_groups for p in g["params"]]
    assert calls == [1] and len(params) == 4  # A and B of c_attn in each of the 2 layers
    assert all(p.requires_grad and 4 in p.shape for p in params)
    assert all(len(opt.state[p]) == 3 for p in params)  # step, exp_avg, exp_avg_sq: it stepped
