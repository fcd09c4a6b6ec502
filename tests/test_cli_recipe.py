"""The recipe options on the command line and in ``check``: what they print, their JSON, and the
one-line errors of bad or contradictory input."""

from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig

from smmf_plan.check import load_config
from smmf_plan.cli import main

TINY_LLAMA = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=176,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=101,
                         max_position_embeddings=64, dtype="bfloat16",
                         architectures=["LlamaForCausalLM"])


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def llama(tmp_path) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLAMA.to_dict()))
    return str(path)


LORA = ("--lora-rank", "4", "--lora-targets", "q_proj,v_proj")


@pytest.mark.parametrize("args, match", [
    (("--grad-accum", "0"), "--grad-accum 0"),
    (("--offload", "gpu"), "not an offload"),
    (("--offload", "optimizer", "-d", "rpi-4-4gb"), "drop --offload"),
    (("--offload", "optimizer", "-d", "jetson-orin-nano"), "unified memory"),
    (("--offload", "optimizer"), "add --device with a GPU"),
    (("--offload", "optimizer+grads", "--grad-accum", "4", "-d", "t4"), "cannot accumulate"),
    (("--quantize-base", "nf4"), "every parameter is trained"),
    (("--quantize-base", "int4", *LORA), "not a quantization"),
    (("--double-quant", *LORA), "--double-quant"),
    (("--dtype", "bf16", "--amp", "bf16"), "every parameter is trained"),
    (("--amp", "bf16", "--dtype", "fp64", *LORA), "master weights"),
    (("--host-memory", "lots", "-d", "t4"), "--host-memory"),
    (("--dist", "ddp", "--world", "2", "--offload", "optimizer", "-d", "t4"), "single-GPU"),
    (("--dist", "fsdp2", "--world", "2", "--quantize-base", "int8", *LORA, "-d", "t4"),
     "no floating storage"),
    (("--dist", "zero3", "--world", "2", "--quantize-base", "int8", *LORA, "-d", "t4"),
     "no floating storage"),
    (("--dist", "zero2", "--world", "2", "--offload", "optimizer", "-d", "rpi-4-4gb"),
     "drop --offload"),
])
def test_bad_recipes_are_one_line_errors(capsys, llama, args, match):
    code, out, err = run(capsys, llama, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err


def test_quantizing_a_model_without_linear_layers_is_refused(capsys):
    code, _, err = run(capsys, "resnet18", "--quantize-base", "nf4", "--trainable", "fc.*")
    assert code == 2 and "no Linear layer" in err and err.count("\n") == 1


def test_qlora_plan_json(capsys, llama):
    code, out, err = run(capsys, llama, *LORA, "--quantize-base", "nf4", "--double-quant",
                         "--grad-checkpointing", "--grad-accum", "4", "-b", "2", "--seq-len", "16",
                         "-d", "t4", "--json", "-o", "adam")
    assert code == 0, err
    doc = json.loads(out)
    t = doc["training"]
    assert (t["batch_size"], t["grad_accum"], t["effective_batch_size"]) == (2, 4, 8)
    r = t["recipe"]
    assert r["precision"] == "quantized-base" and r["quantize_base"] == "nf4" and r["double_quant"]
    assert r["frozen_dtypes"] == ["bfloat16"] and r["trainable_dtypes"] == ["float32"]
    adam = doc["optimizers"]["adam"]
    assert adam["fits"] is True and adam["host_bytes"] == 0
    assert adam["total_bytes"] == sum(adam["breakdown"].values()) == adam["device_bytes"]
    assert any("as bitsandbytes stores them" in a for a in t["assumptions"])


def test_an_fp16_base_under_bf16_autocast_says_how_to_fix_it(capsys, llama):
    """LLaMA-2's config stores its base in fp16; under --amp bf16 autocast meets both half dtypes
    in one op of the model's code and refuses: the plan says activations are unknown and how to get
    them (the base in bf16), and --dtype bf16 traces."""
    args = (llama, *LORA, "--quantize-base", "nf4", "--amp", "bf16", "--seq-len", "16", "--json",
            "-o", "adam")
    code, out, err = run(capsys, *args, "--dtype", "fp16")
    assert code == 0, err
    t = json.loads(out)["training"]
    assert t["complete"] is False
    reason = next(a for a in t["assumptions"] if a.startswith("activations not known"))
    assert "autocast::prioritize" in reason and "--dtype" in reason
    code, out, err = run(capsys, *args, "--dtype", "bf16")
    assert code == 0, err
    assert json.loads(out)["training"]["complete"] is True


def test_offload_plan_shows_host_parts(capsys, llama):
    code, out, err = run(capsys, llama, "--offload", "optimizer", "-d", "t4", "--host-memory",
                         "64GiB", "--seq-len", "16", "--json", "-o", "adam")
    assert code == 0, err
    doc = json.loads(out)
    adam = doc["optimizers"]["adam"]
    host = {k: v for k, v in adam["breakdown"].items() if k.startswith("host_")}
    assert set(host) == {"host_copies", "host_state", "host_temporaries", "host_runtime"}
    assert adam["host_bytes"] == sum(host.values()) and adam["host_fits"] is True
    assert adam["host_headroom_bytes"] == 64 * 2**30 - adam["host_bytes"]
    assert doc["device"]["host_memory_bytes"] == 64 * 2**30
    code, out, _ = run(capsys, llama, "--offload", "optimizer", "-d", "t4", "--seq-len", "16",
                       "-o", "adam")
    flat = " ".join(out.split())
    assert code == 0 and "host 16.00 GiB" in flat and "On the host (16.00 GiB host memory of t4)" in flat
    assert "h.copies h.state h.temp h.runtime host fits (free)" in flat


def test_size_with_offload_judges_the_gpus(capsys, llama):
    code, out, err = run(capsys, "size", llama, "--offload", "optimizer", "--seq-len", "16",
                         "--json", "-o", "adam")
    assert code == 0, err
    doc = json.loads(out)
    kinds = {row["device"]["id"]: row["device"]["memory_kind"] for row in doc["devices"]}
    assert kinds and set(kinds.values()) == {"GPU"}
    assert doc["recipe"]["offload"] == "optimizer"


def test_check_keys_gate_a_recipe(tmp_path, monkeypatch, capsys, llama):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(f'''
[tool.smmf-plan]
[[tool.smmf-plan.checks]]
name = "qlora"
model = "{llama}"
optimizer = "adam"
lora-rank = 4
lora-targets = ["q_proj", "v_proj"]
quantize-base = "nf4"
double-quant = true
grad-checkpointing = true
grad-accum = 2
seq-len = 16
device = "t4"

[[tool.smmf-plan.checks]]
name = "offload"
model = "{llama}"
optimizer = "adam"
offload = "optimizer"
host-memory = "1GiB"
max-host = "800MiB"
seq-len = 16
device = "t4"
''')
    config = load_config()
    q, off = config.checks
    assert (q.options.quantize_base, q.options.double_quant, q.step.grad_accum) == ("nf4", True, 2)
    assert (off.step.offload, off.step.host_memory_bytes, off.max_host) == ("optimizer", 2**30, 800 * 2**20)
    code, out, err = run(capsys, "check", "--json")
    doc = json.loads(out)
    host = [r for r in doc["results"] if r["metric"] == "host"]
    assert [r["check"] for r in host] == ["offload"] and host[0]["budget_source"] == "max-host"
    # the host part is 728 MiB of runtime (torch + transformers) plus copies and state: < 800 MiB
    assert host[0]["status"] == "PASS" and code == 0, err


@pytest.mark.parametrize("body, match", [
    ('quantize-base = "int3"', "quantize-base"),
    ('offload = "disk"', "offload"),
    ("grad-accum = 0", "grad-accum"),
    ('double-quant = "yes"', "double-quant"),
    ('host-memory = "-1"', "host-memory"),
    ("double-quant = true", "--double-quant"),
])
def test_bad_check_keys(tmp_path, monkeypatch, body, match):
    from smmf_plan.errors import PlanError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.smmf-plan]\n[[tool.smmf-plan.checks]]\nmodel = "gpt2"\n{body}\n')
    with pytest.raises(PlanError, match=match) as e:
        load_config()
    assert "check 1" in str(e.value) and "\n" not in str(e.value)


def test_probe_refuses_recipe_options(capsys):
    code, _, err = run(capsys, "probe", "resnet18", "--grad-accum", "2")
    assert code == 2 and "--grad-accum" in err


def test_size_of_weights_without_a_config_says_not_known(capsys, tmp_path):
    """No architecture: no device is 'the smallest that fits' — whether any fits is not known."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(64, 32)}, path)
    code, out, err = run(capsys, "size", str(path), "-d", "rpi-4-4gb", "-d", "t4", "-o", "adam")
    flat = " ".join(out.split())
    assert code == 0, err
    assert "Activations not known" in flat and "without config.json has no architecture" in flat
    assert "adam not known (activations not estimated)" in flat and "none of these" not in flat
    code, out, err = run(capsys, "size", str(path), "-d", "rpi-4-4gb", "-d", "t4", "-o", "adam", "--json")
    doc = json.loads(out)
    assert {row["optimizers"]["adam"]["fits"] for row in doc["devices"]} == {None}
    assert {row["optimizers"]["adam"]["max_batch_size"] for row in doc["devices"]} == {None}
    assert doc["optimizers"]["adam"]["smallest_device"] is None


def test_qlora_offload_accumulation_per_rank_json(capsys, llama):
    """A QLoRA run under FSDP2 with CPUOffloadPolicy and 4 micro-steps on 2 nodes × 2 GPUs: each
    rank's host parts beside its device parts, the effective batch across every rank, and how
    the engines hold the base and the offload stated."""
    from smmf_plan.memory import host_runtime_bytes

    args = (llama, *LORA, "--quantize-base", "nf4", "--amp", "bf16", "--dist", "fsdp2", "--world",
            "4", "--nodes", "2", "--offload", "optimizer", "--grad-accum", "4", "-b", "2",
            "--seq-len", "16", "-d", "a100-80gb", "-o", "adam")
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    doc = json.loads(out)
    t = doc["training"]
    assert (t["batch_size"], t["grad_accum"], t["effective_batch_size"]) == (2, 4, 32)
    assert t["recipe"]["data_parallel_ranks"] == 4
    adam = doc["optimizers"]["adam"]
    for r in adam["ranks"]:
        assert r["host_bytes"] > 0 and r["device_bytes"] + r["host_bytes"] == r["total_bytes"]
        assert r["breakdown"]["host_runtime"] == host_runtime_bytes("transformers")
        assert r["breakdown"]["grads"] == 0 and r["breakdown"]["state_allocated"] == 0
    said = "\n".join(t["assumptions"])
    assert "bnb_4bit_quant_storage=bfloat16" in said and "CPUOffloadPolicy" in said
    assert "set_requires_gradient_sync(True)" in said and "host memory per node (2 ranks" in said
    assert "effective batch 8 per rank, × 4 ranks = 32" in said
    assert "CPUOffloadOptimizer" not in said  # the one-process offload is not what ranks run
    code, out, err = run(capsys, *args)  # the same plan as people read it
    assert code == 0, err
    text = " ".join(out.split())
    assert "micro-batch 2 × 4 micro-steps × 4 ranks = effective batch 32" in text
    assert "On the host" in text
