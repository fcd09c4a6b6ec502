"""Named sources: bundled transformers configs, timm architectures, suggestions, build_module."""

from __future__ import annotations

import json

import pytest

from smmf_plan.errors import PlanError, SourceError
from smmf_plan.sources import build_module, bundled_models, load_model, suggestions
from smmf_plan.sources.module import specs_from_module

# Parameter counts of the class each real config's `architectures` field names (tied weights once).
# Base-model figures are the widely published ones (bert-base 109,482,240, gpt2 124,439,808,
# llama-2-7b 6,738,415,616); MLM heads add dense + LayerNorm + bias and drop the pooler.
BUNDLED = {
    "bert-base-uncased": ("BertForMaskedLM", "masked-lm", 109_482_240 - 590_592 + 590_592 + 1_536 + 30_522),
    "gpt2": ("GPT2LMHeadModel", "causal-lm", 124_439_808),
    "t5-small": ("T5ForConditionalGeneration", "seq2seq-lm", 60_506_624),
    "roberta-base": ("RobertaForMaskedLM", "masked-lm", 124_645_632 - 590_592 + 590_592 + 1_536 + 50_265),
    "albert-base-v2": ("AlbertForMaskedLM", "masked-lm", 11_683_584 - 590_592 + 98_432 + 256 + 30_000),
    "bart-base": ("BartModel", "base", 139_420_416),
    "distilbert-base-uncased": ("DistilBertForMaskedLM", "masked-lm", 66_362_880 + 590_592 + 1_536 + 30_522),
    "llama-2-7b": ("LlamaForCausalLM", "causal-lm", 6_738_415_616),
}


def test_bundled_list_has_the_required_checkpoints():
    assert set(BUNDLED) <= set(bundled_models())


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_config_param_counts(name):
    arch, task, numel = BUNDLED[name]
    spec = load_model(name, use_cache=False)
    assert spec.source == "transformers"
    assert spec.meta["library"] == "transformers"
    assert spec.meta["architecture"] == arch
    assert spec.meta["task"] == task
    assert spec.num_params == numel
    assert all(p.trainable for p in spec.params)
    json.dumps(spec.meta)  # JSON-serializable


def test_llama_shapes_and_no_tied_head():
    spec = load_model("llama-2-7b", use_cache=False)
    by = {p.name: p for p in spec.params}
    assert by["model.embed_tokens.weight"].shape == (32000, 4096)
    assert by["lm_head.weight"].shape == (32000, 4096)
    assert by["model.layers.0.mlp.gate_proj.weight"].shape == (11008, 4096)
    assert spec.num_tensors == 291
    assert spec.meta["checkpoint_dtype"] == "float16"


def test_gpt2_lm_head_is_tied_once():
    spec = load_model("gpt2", use_cache=False)
    wte = next(p for p in spec.params if p.name == "transformer.wte.weight")
    assert wte.aliases == ("lm_head.weight",)
    assert not any(p.name == "lm_head.weight" for p in spec.params)


@pytest.mark.parametrize("alias,name", [
    ("meta-llama/Llama-2-7b-hf", "llama-2-7b"), ("google-t5/t5-small", "t5-small"),
    ("openai-community/gpt2", "gpt2"), ("facebook/bart-base", "bart-base"),
    ("GPT2", "gpt2"), ("FacebookAI/roberta-base", "roberta-base"),
])
def test_hub_style_aliases(alias, name):
    spec = load_model(alias, use_cache=False)
    assert spec.name == name
    assert spec.num_params == BUNDLED[name][2]


def test_config_json_builds_the_named_architecture(tmp_path):
    from smmf_plan.sources.registry import bundled_config

    cfg = bundled_config("bert-base-uncased")
    cfg["architectures"] = ["BertModel"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for src in (tmp_path / "config.json", tmp_path):
        spec = load_model(str(src), use_cache=False)
        assert spec.source == "config"
        assert spec.meta["architecture"] == "BertModel"
        assert spec.num_params == 109_482_240


def test_config_without_architectures_builds_the_head_it_is_trained_with(tmp_path):
    from smmf_plan.sources.registry import bundled_config

    cfg = bundled_config("gpt2")
    del cfg["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = load_model(str(tmp_path), use_cache=False)
    assert spec.meta["architecture"] == "GPT2LMHeadModel"
    assert spec.num_params == 124_439_808  # the LM head is tied to the token embedding
    assert len(spec.meta["warnings"]) == 1 and "GPT2LMHeadModel" in spec.meta["warnings"][0]


@pytest.mark.parametrize("name,numel,tensors", [("resnet50", 25_557_032, 161), ("mobilenetv2_100", 3_504_872, 158)])
def test_timm_on_meta(name, numel, tensors):
    spec = load_model(name, use_cache=False)
    assert spec.source == "timm"
    assert spec.num_params == numel
    assert spec.num_tensors == tensors
    m = spec.meta
    assert (m["library"], m["timm_name"], m["task"]) == ("timm", name, "image-classification")
    assert m["input_size"] == [3, 224, 224]
    assert m["num_classes"] == 1000
    assert m["buffers"] > 0  # BatchNorm statistics are not parameters


def test_timm_num_classes():
    spec = load_model("resnet50", num_classes=10, use_cache=False)
    assert spec.num_params == 25_557_032 - 2048 * 990 - 990
    assert spec.meta["num_classes"] == 10
    by = {p.name: p for p in spec.params}
    assert by["fc.weight"].shape == (10, 2048)


def test_num_classes_must_be_positive():
    with pytest.raises(PlanError, match="num-classes"):
        load_model("resnet50", num_classes=0, use_cache=False)


def test_unknown_model_suggests_names():
    with pytest.raises(SourceError) as e:
        load_model("resnet5O", use_cache=False)
    msg = str(e.value)
    assert "did you mean" in msg and "resnet50" in msg and "\n" not in msg
    assert "gpt2" in suggestions("gtp2")
    assert "bert-base-uncased" in suggestions("bert-base-uncase")


def test_unknown_model_cli_exit_2(capsys):
    import smmf_plan.cli

    with pytest.raises(SystemExit) as e:
        smmf_plan.cli.main(["resnet5O", "--no-cache"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean" in err and "Traceback" not in err


def test_missing_path_is_not_a_hub_lookup(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_model(str(tmp_path / "nope" / "model.safetensors"), use_cache=False)


def test_build_module_meta_and_cpu():
    import torch

    spec = load_model("mobilenetv2_100", num_classes=7, use_cache=False)
    m = build_module(spec)
    assert next(m.parameters()).device.type == "meta"
    assert specs_from_module(m) == spec.params
    small = load_model("resnet18", num_classes=3, use_cache=False)
    cpu = build_module(small, device="cpu")
    assert next(cpu.parameters()).device.type == "cpu"
    assert sum(p.numel() for p in cpu.parameters()) == small.num_params
    assert torch.isfinite(cpu.fc.weight).all()
    gpt2 = build_module(load_model("gpt2", use_cache=False))
    assert type(gpt2).__name__ == "GPT2LMHeadModel"
