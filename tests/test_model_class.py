"""Which class a transformers config builds, what a plan says it built, and the dtype it planned.

A config without ``architectures`` (or with a misspelt one) must not silently plan the bare model:
a Llama-3.1-8B config.json written here (its published shape) plans its 525 M-parameter LM head
and the published 8,030,261,248 parameters, with a one-line warning naming what was built.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smmf_plan.cli import main
from smmf_plan.sources.registry import bundled_config

#: meta-llama/Llama-3.1-8B config.json, as published (its "architectures" left out).
LLAMA_31_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
LLAMA_PARAMS = 8_030_261_248  # Meta's model card / safetensors index: 8.03 B
LM_HEAD = 128256 * 4096  # 525,336,576


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One folder for the module: the shape cache (so a config planned twice is built once) and
    the Llama config without architectures."""
    return tmp_path_factory.mktemp("model-class")


@pytest.fixture(autouse=True)
def _module_cache(shared, monkeypatch):
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(shared / "cache"))


@pytest.fixture(scope="module")
def llama(shared):
    return write_config(shared / "llama-3.1-8b", LLAMA_31_8B)


def smmf_warnings(err: str) -> list[str]:
    """smmf-plan's own warning lines (libraries may log their own on import)."""
    return [ln for ln in err.splitlines() if ln.startswith("warning:")]


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def write_config(folder, cfg):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder / "config.json")


def test_llama_config_without_architectures_plans_its_lm_head(llama):
    """The real CLI in a subprocess, as a user runs it (the warning also comes from the cache)."""
    path = llama
    r = subprocess.run([sys.executable, "-m", "smmf_plan", "shapes", path, "-o", "adam", "--json"],
                       capture_output=True, text=True, env=dict(__import__("os").environ))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["class"] == "LlamaForCausalLM"
    assert doc["model"]["num_params"] == LLAMA_PARAMS
    heads = [p for p in doc["params"] if p["name"] == "lm_head.weight"]
    assert len(heads) == 1 and heads[0]["numel"] == LM_HEAD == 525_336_576
    # every parameter in the config's torch_dtype (what from_pretrained loads), the head included:
    # from_config would have built the bare model in bf16 and the head in fp32
    assert doc["model"]["dtype"] == "bfloat16" and doc["model"]["dtypes"] == {"bfloat16": LLAMA_PARAMS}
    warnings = smmf_warnings(r.stderr)
    assert len(warnings) == 1
    assert "architectures" in warnings[0] and "LlamaForCausalLM" in warnings[0]
    assert "--task" in warnings[0]


def test_the_class_is_in_the_table_header_and_the_json(tmp_path, capsys):
    cfg = dict(LLAMA_31_8B, architectures=["LlamaForCausalLM"])
    path = write_config(tmp_path / "named", cfg)
    code, out, err = run([path, "-o", "adam"], capsys)
    assert code == 0 and not smmf_warnings(err)  # named and known: nothing to warn about
    header = out.splitlines()[0]
    assert "LlamaForCausalLM" in header and "8,030.3 M params" in header
    code, out, _ = run([path, "-o", "adam", "--json"], capsys)
    model = json.loads(out)["model"]
    assert model["class"] == "LlamaForCausalLM" and model["num_params"] == LLAMA_PARAMS
    code, out, _ = run(["resnet18", "-o", "adam", "--json"], capsys)
    assert json.loads(out)["model"]["class"] == "ResNet"


def test_misspelt_architecture_warns_with_suggestions(tmp_path, capsys):
    path = write_config(tmp_path / "typo", dict(LLAMA_31_8B, architectures=["LlamaForCasualLM"]))
    code, out, err = run([path, "-o", "adam", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["model"]["num_params"] == LLAMA_PARAMS
    lines = smmf_warnings(err)
    assert len(lines) == 1
    assert "'LlamaForCasualLM'" in lines[0] and "did you mean LlamaForCausalLM" in lines[0]


def test_task_overrides_the_head(llama, capsys):
    path = llama
    code, out, err = run([path, "-o", "adam", "--json", "--task", "sequence-classification",
                          "--num-classes", "3"], capsys)
    assert code == 0 and not smmf_warnings(err)  # asked for explicitly: no warning
    model = json.loads(out)["model"]
    assert model["class"] == "LlamaForSequenceClassification"
    # the LM head replaced by a bias-free 3-way score layer
    assert model["num_params"] == LLAMA_PARAMS - LM_HEAD + 3 * 4096
    code, out, _ = run([path, "-o", "adam", "--json", "--task", "base"], capsys)
    assert json.loads(out)["model"]["class"] == "LlamaModel"
    assert json.loads(out)["model"]["num_params"] == LLAMA_PARAMS - LM_HEAD
    # the named class is overridden too
    code, out, _ = run(["bert-base-uncased", "-o", "adam", "--json", "--task", "sequence-classification"],
                       capsys)
    assert json.loads(out)["model"]["class"] == "BertForSequenceClassification"


@pytest.mark.parametrize("bundled,expected", [
    ("bert-base-uncased", "BertForPreTraining"),   # MLM + next-sentence heads, as BERT was trained
    ("t5-small", "T5ForConditionalGeneration"),
    ("bart-base", "BartForConditionalGeneration"),
    ("gpt2", "GPT2LMHeadModel"),
    ("roberta-base", "RobertaForMaskedLM"),
])
def test_pretraining_head_for_encoder_and_encoder_decoder_types(bundled, expected, tmp_path, capsys):
    cfg = {k: v for k, v in bundled_config(bundled).items() if k != "architectures"}
    path = write_config(tmp_path / bundled, cfg)
    code, out, err = run([path, "-o", "adam", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["model"]["class"] == expected
    assert len(smmf_warnings(err)) == 1 and expected in smmf_warnings(err)[0]


@pytest.mark.parametrize("args,needle", [
    (["--task", "sequence-clasification"], "did you mean sequence-classification"),
    (["--task", "seq2seq-lm"], "no seq2seq-lm head for model_type 'llama'"),
])
def test_bad_task_is_one_line(args, needle, llama, capsys):
    path = llama
    code, out, err = run([path, "-o", "adam", *args], capsys)
    assert code == 2 and out == ""
    ours = [ln for ln in err.splitlines() if ln.startswith(("error:", "warning:"))]
    assert len(ours) == 1 and ours[0].startswith("error: ") and needle in ours[0]


def test_task_on_a_timm_model(capsys):
    code, _, err = run(["resnet18", "--task", "causal-lm"], capsys)
    assert code == 2 and "timm models are image classifiers" in err
    code, out, _ = run(["resnet18", "--task", "image-classification", "-o", "adam", "--json"], capsys)
    assert code == 0 and json.loads(out)["model"]["class"] == "ResNet"


def test_vision_config_plans_its_image_head_and_traces_images(tmp_path, capsys):
    cfg = {"model_type": "vit", "hidden_size": 192, "num_hidden_layers": 2, "num_attention_heads": 3,
           "intermediate_size": 768, "image_size": 32, "patch_size": 8, "num_labels": 10}
    path = write_config(tmp_path / "vit", cfg)
    code, out, err = run([path, "-o", "adam", "-d", "4GB", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"]["class"] == "ViTForImageClassification"
    assert "3×32×32" in doc["training"]["input"]
    assert doc["optimizers"]["adam"]["breakdown"]["activations"] > 0


def test_json_dtype_is_the_planned_one(tmp_path, capsys):
    """Without --dtype the source's dtype, with it the one asked for; mixed checkpoints say so."""
    code, out, _ = run(["resnet18", "-o", "adam", "--json"], capsys)
    model = json.loads(out)["model"]
    assert model["dtype"] == "float32" and model["dtypes"] == {"float32": 11_689_512}
    code, out, _ = run(["resnet18", "-o", "adam", "--json", "--dtype", "fp16"], capsys)
    assert json.loads(out)["model"]["dtype"] == "float16"
    # a safetensors file holding bf16 and fp32 tensors
    import struct

    header = {"a": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]},
              "b": {"dtype": "F32", "shape": [8], "data_offsets": [64, 96]}}
    blob = json.dumps(header).encode()
    f = tmp_path / "mixed.safetensors"
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 96)
    code, out, _ = run([str(f), "-o", "adam", "--json"], capsys)
    model = json.loads(out)["model"]
    assert model["dtype"] == "mixed" and model["dtypes"] == {"bfloat16": 32, "float32": 8}
    code, out, _ = run([str(f), "-o", "adam"], capsys)
    assert "mixed: bfloat16 80%, float32 20%" in " ".join(out.split())  # rich may wrap the header


def test_check_warns_about_the_guessed_head_too(tmp_path, monkeypatch, capsys):
    cfg = {k: v for k, v in bundled_config("gpt2").items() if k != "architectures"}
    write_config(tmp_path / "lm", cfg)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.smmf-plan]\n[[tool.smmf-plan.checks]]\nname = "lm"\nmodel = "lm"\n'
        'optimizer = "smmf"\nmax-state = "1 GiB"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["check", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["checks"][0]["model_summary"]["class"] == "GPT2LMHeadModel"
    warnings = smmf_warnings(err)
    assert len(warnings) == 1 and "check 1 ('lm')" in warnings[0] and "GPT2LMHeadModel" in warnings[0]
