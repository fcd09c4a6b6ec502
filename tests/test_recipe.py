"""The precision recipe: which dtype each role is stored in, and which combinations are refused."""

from __future__ import annotations

import pytest

from smmf_plan.errors import PlanError
from smmf_plan.model import ModelSpec
from smmf_plan.recipe import Recipe, stored_dtype
from smmf_plan.shapes import ParamSpec


def _spec(*params: ParamSpec, **meta) -> ModelSpec:
    return ModelSpec("toy", "config", list(params), dict(meta))


BASE = ParamSpec("layer.q_proj.weight", (8, 4), "float32", False)
NORM = ParamSpec("layer.norm.weight", (4,), "float32", False)
ADAPTER_A = ParamSpec("layer.q_proj.lora_A.weight", (2, 4), "float32", True)
ADAPTER_B = ParamSpec("layer.q_proj.lora_B.weight", (8, 2), "float32", True)
HEAD = ParamSpec("head.weight", (3, 4), "float32", True)
STEP = ParamSpec("step", (), "int64", False)


def _dtypes(recipe: Recipe, spec: ModelSpec) -> dict[str, str]:
    return {p.name: p.dtype for p in recipe.apply(spec).params}


def test_the_configs_dtype_is_the_default_for_a_checkpoint_built_from_its_config():
    lora = _spec(BASE, NORM, ADAPTER_A, ADAPTER_B, checkpoint_dtype="bfloat16")
    # a frozen bf16 base with float32 adapters (PEFT's autocast_adapter_dtype), as loaded by
    # from_pretrained(dtype="auto") and get_peft_model
    assert _dtypes(Recipe(), lora) == {
        "layer.q_proj.weight": "bfloat16", "layer.norm.weight": "bfloat16",
        "layer.q_proj.lora_A.weight": "float32", "layer.q_proj.lora_B.weight": "float32"}
    assert Recipe().precision(lora) == "half-base"
    # full training of a bf16 checkpoint: pure bf16
    full = _spec(ParamSpec("w", (4, 4)), ParamSpec("b", (4,)), checkpoint_dtype="bfloat16")
    assert set(_dtypes(Recipe(), full).values()) == {"bfloat16"}
    assert Recipe().precision(full) == "pure"


def test_weights_files_keep_their_own_dtypes():
    spec = _spec(ParamSpec("w", (4, 4), "float16"), checkpoint_dtype="bfloat16", weights="m.safetensors")
    assert stored_dtype(spec) is None
    assert _dtypes(Recipe(), spec) == {"w": "float16"}


def test_amp_keeps_float32_master_weights_and_a_half_base_as_stored():
    spec = _spec(BASE, ADAPTER_A, ADAPTER_B, HEAD, checkpoint_dtype="float16")
    got = _dtypes(Recipe(amp="bf16"), spec)
    assert got["layer.q_proj.weight"] == "float16"
    assert {got[n] for n in ("layer.q_proj.lora_A.weight", "head.weight")} == {"float32"}
    assert Recipe(amp="bf16").precision(spec) == "amp"
    assert Recipe(amp="bf16").compute_dtype(spec) == "bfloat16"


def test_dtype_half_with_amp_is_a_half_base():
    spec = _spec(BASE, NORM, ADAPTER_A, ADAPTER_B)
    r = Recipe(dtype="bf16", amp="bf16")
    r.check(spec)
    got = _dtypes(r, spec)
    assert got["layer.q_proj.weight"] == got["layer.norm.weight"] == "bfloat16"
    assert got["layer.q_proj.lora_A.weight"] == "float32"


def test_dtype_half_with_amp_and_nothing_frozen_is_refused():
    with pytest.raises(PlanError, match="every parameter is trained") as e:
        Recipe(dtype="bf16", amp="bf16").check(_spec(HEAD))
    assert "\n" not in str(e.value)


def test_pure_dtype_types_every_floating_parameter_and_keeps_integers():
    spec = _spec(BASE, ADAPTER_A, STEP)
    assert _dtypes(Recipe(dtype="fp16"), spec) == {
        "layer.q_proj.weight": "float16", "layer.q_proj.lora_A.weight": "float16", "step": "int64"}


def test_apply_twice_is_apply_once():
    spec = _spec(BASE, ADAPTER_A, ADAPTER_B, checkpoint_dtype="bfloat16")
    for r in (Recipe(), Recipe(amp="fp16"), Recipe(dtype="bf16", amp="bf16"), Recipe(dtype="fp32")):
        once = r.apply(spec)
        assert r.apply(once).params == once.params


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="int8"), "not a floating-point dtype"),
    (dict(dtype="fp8"), "unknown dtype"),
    (dict(amp="int4"), "not a mixed-precision dtype"),
    (dict(amp="bf16", dtype="fp64"), "master weights"),
    (dict(quantize_base="int4"), "not a quantization"),
    (dict(quantize_base="nf4", dtype="fp64"), "16/32-bit"),
    (dict(double_quant=True), "--double-quant"),
    (dict(quantize_base="int8", double_quant=True), "--double-quant"),
    (dict(grad_accum=0), "--grad-accum 0"),
    (dict(grad_accum=True), "--grad-accum"),
    (dict(offload="gpu"), "not an offload"),
    (dict(offload="optimizer+grads", grad_accum=4), "cannot accumulate"),
])
def test_bad_and_contradictory_recipes_are_one_line_errors(kwargs, match):
    with pytest.raises(PlanError, match=match) as e:
        Recipe(**kwargs)
    assert "\n" not in str(e.value)


def test_quantizing_needs_a_frozen_base():
    with pytest.raises(PlanError, match="every parameter is trained"):
        Recipe(quantize_base="nf4").check(_spec(HEAD))
    Recipe(quantize_base="nf4").check(_spec(BASE, ADAPTER_A))


def test_spellings_are_canonical():
    r = Recipe(dtype="BF16", amp="fp16", quantize_base="NF4", offload="Optimizer")
    assert (r.dtype, r.amp, r.quantize_base, r.offload) == ("bfloat16", "float16", "nf4", "optimizer")
    assert r == Recipe(dtype="bfloat16", amp="float16", quantize_base="nf4", offload="optimizer")


def test_json_and_words():
    spec = _spec(BASE, NORM, ADAPTER_A, ADAPTER_B, checkpoint_dtype="bfloat16")
    r = Recipe(quantize_base="nf4", double_quant=True, grad_checkpointing=True, grad_accum=4)
    d = r.to_dict(spec, batch_size=2)
    assert d["precision"] == "quantized-base"
    assert d["trainable_dtypes"] == ["float32"] and d["frozen_dtypes"] == ["bfloat16"]
    assert (d["micro_batch_size"], d["effective_batch_size"], d["grad_accum"]) == (2, 8, 4)
    text = r.describe(spec)
    assert text.startswith("nf4 (double quant) base") and "4 micro-steps" in text
