"""LoRA planning and --trainable/--freeze globs."""

from __future__ import annotations

import pytest

from smmf_plan.errors import PlanError
from smmf_plan.shapes import ParamSpec
from smmf_plan.sources import apply_lora, load_model

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_llama_7b_lora_r8_all_seven_projections():
    spec = load_model("llama-2-7b", lora_rank=8, lora_targets=SEVEN, use_cache=False)
    assert spec.trainable_params == 19_988_480
    assert spec.num_params == 6_738_415_616 + 19_988_480
    assert len(spec.trainable) == 32 * 7 * 2
    by = {p.name: p for p in spec.params}
    assert by["model.layers.0.mlp.down_proj.lora_A.weight"].shape == (8, 11008)
    assert by["model.layers.0.mlp.down_proj.lora_B.weight"].shape == (4096, 8)
    assert by["model.layers.3.self_attn.q_proj.lora_A.weight"].trainable
    assert not by["model.layers.3.self_attn.q_proj.weight"].trainable
    assert spec.meta["lora"] == {"rank": 8, "targets": SEVEN}


def test_gpt2_conv1d_is_transposed():
    spec = load_model("gpt2", lora_rank=4, lora_targets=["c_attn"], use_cache=False)
    by = {p.name: p for p in spec.params}
    # Conv1D c_attn stores (in=768, out=2304)
    assert by["transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 768)
    assert by["transformer.h.0.attn.c_attn.lora_B.weight"].shape == (2304, 4)
    assert spec.trainable_params == 12 * (4 * 768 + 2304 * 4)


def test_lora_keeps_base_dtype():
    params = [ParamSpec("a.q_proj.weight", (6, 4), "bfloat16"), ParamSpec("a.q_proj.bias", (6,), "bfloat16")]
    out = apply_lora(params, 2, ["q_proj"])
    assert [(p.name, p.shape, p.dtype, p.trainable) for p in out] == [
        ("a.q_proj.weight", (6, 4), "bfloat16", False),
        ("a.q_proj.lora_A.weight", (2, 4), "bfloat16", True),
        ("a.q_proj.lora_B.weight", (6, 2), "bfloat16", True),
        ("a.q_proj.bias", (6,), "bfloat16", False),
    ]


def test_unknown_lora_target_lists_linear_modules():
    with pytest.raises(PlanError) as e:
        load_model("llama-2-7b", lora_rank=8, lora_targets=["query"], use_cache=False)
    msg = str(e.value)
    assert "query" in msg and "q_proj" in msg and "down_proj" in msg and "\n" not in msg


def test_lora_needs_both_options():
    with pytest.raises(PlanError, match="--lora-targets"):
        load_model("gpt2", lora_rank=8, use_cache=False)
    with pytest.raises(PlanError, match="--lora-rank"):
        load_model("gpt2", lora_targets=["c_attn"], use_cache=False)


def test_trainable_and_freeze_globs():
    spec = load_model("bert-base-uncased", trainable=["*.encoder.layer.11.*"], use_cache=False)
    assert all(p.name.startswith("bert.encoder.layer.11.") for p in spec.trainable)
    assert spec.trainable_params == 7_087_872  # one BERT-base layer
    spec = load_model("bert-base-uncased", freeze=["bert.embeddings.*"], use_cache=False)
    emb = (30522 + 512 + 2) * 768 + 2 * 768
    assert spec.trainable_params == spec.num_params - emb


def test_glob_matching_nothing_is_an_error():
    with pytest.raises(PlanError, match="--trainable 'decoder.xyz.*'"):
        load_model("bert-base-uncased", trainable=["decoder.xyz.*"], use_cache=False)
    with pytest.raises(PlanError, match="--freeze"):
        load_model("bert-base-uncased", freeze=["nothing*"], use_cache=False)


def test_trainable_with_lora_adds_to_adapters():
    spec = load_model("llama-2-7b", lora_rank=8, lora_targets=["q_proj", "v_proj"],
                      trainable=["*.norm.weight"], use_cache=False)
    assert spec.trainable_params == 32 * 2 * (8 * 4096 * 2) + 4096
