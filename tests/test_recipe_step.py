"""A training step under a recipe: half-precision bases, gradient accumulation, optimizer offload,
and the fit against device and host memory — bytes counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smmf_plan.allocators import pinned_round
from smmf_plan.devices import DEFAULT_GPU_HOST_BYTES, catalog, get_device
from smmf_plan.errors import PlanError
from smmf_plan.fit import judge, recommendation
from smmf_plan.memory import HOST_RUNTIME, OFFLOAD_MINIMAL_SIZE, estimate, spec_of_module
from smmf_plan.optimizers import parse_many
from smmf_plan.recipe import Recipe
from smmf_plan.sources import load_model
from smmf_plan.tasks import IMAGE_CLASSIFICATION

MiB = 2**20


def _mlp(deep: bool = False):
    """Linear layers of 128x64 = 8192 elements (offloaded), [128x128 = 16384 (offloaded),] and
    4x128 = 512 (kept on the device: under torchao's minimal size)."""
    with torch.device("meta"):
        middle = [nn.Linear(128, 128, bias=False), nn.ReLU()] if deep else []
        return nn.Sequential(nn.Linear(64, 128, bias=False), nn.ReLU(), *middle,
                             nn.Linear(128, 4, bias=False))


def _estimate(recipe: Recipe, allocator="cuda", batch=4, optimizers="adam", deep=False):
    make = lambda: _mlp(deep)  # noqa: E731
    spec = spec_of_module(make(), "mlp")
    return estimate(spec, parse_many(optimizers), batch_size=batch, module_factory=make,
                    recipe=recipe, allocator=allocator)


@pytest.fixture(autouse=True)
def _flat_inputs(monkeypatch):
    """The MLP takes (B, 64) inputs: an "image" of size (64,) is what the trace builds for it."""
    from smmf_plan import memory
    from smmf_plan.trace import inputs

    real = inputs.input_spec_for

    def spec_for(model, batch_size, input_size=None, seq_len=None):
        if isinstance(model, nn.Sequential):
            return inputs.InputSpec(IMAGE_CLASSIFICATION, batch_size, input_size=(64,),
                                    num_classes=4)
        return real(model, batch_size, input_size, seq_len)

    monkeypatch.setattr(memory, "input_spec_for", spec_for)


def test_accumulation_traces_a_later_micro_step():
    """In a later micro-step every gradient exists while backward runs; the new gradient of the
    large layer is a transient added into it: the activation term grows by exactly those bytes."""
    plain = _estimate(Recipe(), allocator="cpu").breakdowns["adam"]
    accum = _estimate(Recipe(grad_accum=4), allocator="cpu")
    assert accum.complete, accum.incomplete_reason
    bd = accum.breakdowns["adam"]
    assert bd["activations"] - plain["activations"] == 128 * 64 * 4
    assert (bd["grads"], bd["weights"]) == (plain["grads"], plain["weights"])
    assert accum.recipe_info["effective_batch_size"] == 16 and accum.recipe_info["grad_accum"] == 4


def test_offload_moves_state_and_copies_to_the_host():
    big, small = (128 * 64 + 128 * 128) * 4, 4 * 128 * 4
    est = _estimate(Recipe(offload="optimizer"), allocator="cuda", deep=True)
    assert est.complete, est.incomplete_reason
    bd = est.breakdowns["adam"]
    # device: weights and every gradient; the small layer's Adam state (2 moments, 512-B blocks)
    assert bd["weights"] == bd["grads"] == big + small
    assert bd["state_allocated"] == 2 * small
    # host: pinned param + grad copies of the large layers (powers of two already), their state
    # in 64-B blocks: exp_avg, exp_avg_sq and a 4-B step each
    assert bd["host_copies"] == 2 * (pinned_round(32768) + pinned_round(65536)) == 2 * big
    assert bd["host_state"] == 2 * big + 2 * 64
    # the host step runs one parameter at a time: the largest one's temporaries
    assert bd["host_temporaries"] == parse_many("adam")[0].step_temp_bytes(
        [spec for spec in spec_of_module(_mlp(True)).params if spec.numel == 128 * 128], "cpu")
    assert bd["host_runtime"] == HOST_RUNTIME["pytorch"]  # a bare module: no model library
    assert bd.device_bytes + bd.host_bytes == bd.total_bytes
    # with the gradients offloaded too, the large layers' gradients leave the device: each is
    # freed once copied, so the first one produced is gone when the last one is made
    grads = _estimate(Recipe(offload="optimizer+grads"), allocator="cuda", deep=True).breakdowns["adam"]
    # (the live tensors: at this size the CUDA caching allocator's 2 MiB segment holds both runs,
    # so its reserved total, device_bytes with the allocator part, can be the same)
    assert grads["grads"] == small
    assert grads.device_bytes - grads["allocator"] < bd.device_bytes - bd["allocator"]
    assert grads["host_copies"] == bd["host_copies"] and grads["host_state"] == bd["host_state"]


def test_pinned_blocks_are_powers_of_two():
    assert [pinned_round(n) for n in (0, 1, 4096, 4097, 3 * MiB)] == [0, 1, 4096, 8192, 4 * MiB]


def test_minimal_size_is_torchaos():
    import inspect

    from torchao.optim import CPUOffloadOptimizer

    assert inspect.signature(CPUOffloadOptimizer).parameters["minimal_size"].default == OFFLOAD_MINIMAL_SIZE


def test_the_fit_checks_the_host_memory_too():
    est = _estimate(Recipe(offload="optimizer"), allocator="cuda", deep=True)
    assert est.complete, est.incomplete_reason
    step = est.steps()["adam"]
    gpu = catalog()["t4"]
    assert gpu.host_memory == 16 * 2**30 and "g4dn.xlarge" in gpu.host_memory_basis
    ok = judge(step, gpu, 4)
    assert ok.fits and ok.host_fits and ok.to_dict()["host_headroom_bytes"] == gpu.host_memory - step.host_bytes
    tight = gpu.with_host_memory(step.host_bytes - 1)
    f = judge(step, tight, 4)
    assert f.headroom_bytes > 0 and f.host_fits is False and f.fits is False and f.max_batch_size == 0
    assert "on the host" in recommendation(tight, {"adam": f})


def test_gpus_have_a_host_and_other_devices_refuse_offload():
    for d in catalog().values():
        if d.memory_kind == "GPU":
            assert d.host_memory and d.host_memory_basis.startswith("[")
            assert d.reference()["host_memory_bytes"] == d.host_memory
        else:
            assert d.host_memory is None
            with pytest.raises(PlanError, match="drop --offload") as e:
                d.check_offload("optimizer")
            assert "\n" not in str(e.value)
    mine = get_device("24GiB")
    assert mine.host_memory is None  # an ad-hoc size is host RAM


def test_a_user_gpu_without_host_gets_the_stated_default(tmp_path):
    from smmf_plan.devices import load_devices_file

    f = tmp_path / "d.toml"
    f.write_text('[my-gpu]\ntotal_bytes = "24GiB"\nmemory_kind = "GPU"\nallocator = "cuda"\n'
                 '[my-big]\ntotal_bytes = "80GiB"\nmemory_kind = "GPU"\nallocator = "cuda"\n'
                 'host_bytes = "512GiB"\n')
    devs = load_devices_file(f)
    assert devs["my-gpu"].host_memory == DEFAULT_GPU_HOST_BYTES and "[assumed]" in devs["my-gpu"].host_memory_basis
    assert devs["my-big"].host_memory == 512 * 2**30
    f.write_text('[board]\ntotal_bytes = "4GiB"\nhost_bytes = "4GiB"\n')
    with pytest.raises(PlanError, match="only a GPU has a host memory"):
        load_devices_file(f)


def test_lora_over_the_configs_half_base_fits_a_24gb_card():
    """llama-2-7b's config says float16: LoRA plans that base in float16 (from_pretrained's
    default), its adapters in float32 — 12.6 GiB of weights, not 25 GiB."""
    spec = load_model("llama-2-7b", lora_rank=8, lora_targets=["q_proj", "v_proj"])
    base, adapters = 6_738_415_616, 32 * 2 * (8 * 4096 + 4096 * 8)
    for recipe in (Recipe(), Recipe(amp="bf16")):
        est = estimate(spec, parse_many("adam"), recipe=recipe, allocator="cuda", trace=False)
        bd = est.breakdowns["adam"]
        assert bd["weights"] == base * 2 + adapters * 4
        assert bd["grads"] == adapters * 4 and est.recipe_info["frozen_dtypes"] == ["float16"]
    # --dtype bf16 --amp bf16: the base in bf16 (same bytes), adapters still float32
    est = estimate(spec, parse_many("adam"), recipe=Recipe(dtype="bf16", amp="bf16"),
                   allocator="cuda", trace=False)
    assert est.breakdowns["adam"]["weights"] == base * 2 + adapters * 4
    assert est.recipe_info["precision"] == "amp"
    # the same run planned in float32, as before this recipe existed
    fp32 = estimate(spec, parse_many("adam"), recipe=Recipe(dtype="fp32"), allocator="cuda", trace=False)
    assert fp32.breakdowns["adam"]["weights"] == (base + adapters) * 4
