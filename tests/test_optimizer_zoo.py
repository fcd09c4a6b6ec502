"""The optimizer zoo end to end: which parameters low-rank optimizers treat (Linear weights but the
output head, per source; --target globs), model facts for Adam-mini, "cannot run" where an
implementation fails on a model, exact totals on LLaMA-2-7B worked out by hand, paged states,
the registry listing, one-line errors, and Muon's combined optimizer."""

from __future__ import annotations

import json

import pytest
import torch

from cli_run import isolated_cache, run  # noqa: F401 - isolated_cache is an autouse fixture
from smmf_plan.errors import PlanError
from smmf_plan.model import SPEC_FORMAT, ModelSpec
from smmf_plan.optimizers import Unsupported, parse
from smmf_plan.plan import plan_model, plan_state
from smmf_plan.shapes import ParamSpec
from smmf_plan.sources import load_model
from smmf_plan.targets import is_target

LLAMA_7B_PARAMS = 6_738_415_616


# --------------------------------------------------------------------------- what is targeted
@pytest.mark.parametrize("source, heads, targets", [
    ("llama-2-7b", ["lm_head.weight"], 32 * 7),                       # q k v o gate up down
    ("gpt2", ["transformer.wte.weight"], 12 * 4),                     # Conv1D c_attn c_proj c_fc c_proj
    ("bert-base-uncased", ["bert.embeddings.word_embeddings.weight", "cls.predictions.bias"],
     12 * 6 + 1),                                                      # + the MLM transform dense
    ("resnet18", ["fc.weight", "fc.bias"], 0),                        # timm's classifier is the only Linear
])
def test_linear_weights_but_the_output_head_are_targeted(source, heads, targets):
    spec = load_model(source)
    assert [p.name for p in spec.params if p.head] == heads
    assert sum(is_target(p) for p in spec.params) == targets


def test_a_checkpoint_without_config_is_read_by_names(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(10, 4),
               "model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4),
               "model.layers.0.input_layernorm.weight": torch.zeros(4),
               "lm_head.weight": torch.zeros(10, 4)}, tmp_path / "model.safetensors")
    spec = load_model(str(tmp_path / "model.safetensors"), use_cache=False)
    assert [p.name for p in spec.params if is_target(p)] == ["model.layers.0.self_attn.q_proj.weight"]
    assert [p.name for p in spec.params if p.head] == ["lm_head.weight"]


def test_lora_adapters_are_linear_layers():
    spec = load_model("llama-2-7b", lora_rank=8, lora_targets=("q_proj", "v_proj"))
    plan = plan_state(spec.params, parse("galore"))
    assert plan.groups == {"galore": 2 * 2 * 32}  # lora_A and lora_B of q and v, 32 layers


def test_target_globs_replace_the_rule():
    spec = load_model("llama-2-7b", targets=("*q_proj*",))
    assert sum(is_target(p) for p in spec.params) == 32
    assert plan_state(spec.params, parse("galore")).groups == {"galore": 32, "adamw": 291 - 32}
    with pytest.raises(PlanError, match="matches no parameter"):
        load_model("llama-2-7b", targets=("*nothing*",))
    with pytest.raises(PlanError, match="not 2-D"):
        load_model("llama-2-7b", targets=("*layernorm*",))


def test_the_shape_cache_keeps_the_facts():
    assert SPEC_FORMAT == 2
    spec = ModelSpec("m", "test", [ParamSpec("w", (4, 4), linear=True), ParamSpec("h", (4, 4), head=True),
                                   ParamSpec("t", (2, 2), target=False)])
    back = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back.params == spec.params
    with pytest.raises(ValueError, match="stale"):
        ModelSpec.from_dict({**spec.to_dict(), "format": 1})


# --------------------------------------------------------------------------- exact totals by hand
def test_galore_on_llama_7b_keeps_the_whole_svd_factor_of_fp32_weights(capsys):
    code, out, _ = run(["llama-2-7b", "-o", "galore", "--target", "*q_proj*", "--dtype", "fp32", "--json"], capsys)
    entry = json.loads(out)["optimizers"]["galore"]
    assert code == 0 and entry["groups"] == {"galore": 32, "adamw": 259}
    # q_proj 4096×4096 (m ≥ n): Vh[:128] is a view of the 4096×4096 fp32 Vh, moments 4096×128;
    # every other parameter: AdamW's two fp32 moments (GaLore's step counter is a Python int)
    q = 4096 * 4096
    assert entry["state_bytes"] == 32 * 4 * (q + 2 * 4096 * 128) + 8 * (LLAMA_7B_PARAMS - 32 * q)


def test_adam_mini_on_llama_7b_one_second_moment_per_head_row_or_tensor():
    spec = load_model("llama-2-7b")
    assert spec.facts == {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32}
    plan = plan_model(spec, [parse("adam-mini")])["adam-mini"]
    # vmean per layer: q and k one per head (32 each), v o gate up down one per output row
    rows = 32 * (32 + 32 + 4096 + 4096 + 11008 + 11008 + 4096) + 32000 + 32000  # + embed, lm_head
    norms = 2 * 32 + 1  # one 0-d value each
    assert plan.state_bytes == 4 * LLAMA_7B_PARAMS + 4 * (rows + norms)


def test_adam_mini_cannot_run_on_bert_and_the_plan_says_why(capsys):
    code, out, _ = run(["bert-base-uncased", "-o", "adam,adam-mini", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["optimizers"]["adam"]["state_bytes"] > 0
    entry = doc["optimizers"]["adam-mini"]
    assert entry["state_bytes"] is None and "too many indices" in entry["unsupported"]
    code, out, _ = run(["bert-base-uncased", "-o", "adam-mini"], capsys)
    assert code == 0 and "cannot run" in out and "LayerNorm" in out


def test_paged_8bit_states_leave_the_cuda_allocator():
    spec = ParamSpec("w", (4096, 4096))
    paged = sum(t.allocated("cuda") for t in parse("adamw8bit:paged=true").state(spec))
    plain = sum(t.allocated("cuda") for t in parse("adamw8bit").state(spec))
    assert plain - paged == 2 * 4096 * 4096  # two uint8 states in unified memory
    small = ParamSpec("b", (50_000,))  # under 10^5 elements bitsandbytes never pages
    assert parse("adamw8bit:paged=true").state(small) == parse("adamw8bit").state(small)


# --------------------------------------------------------------------------- listing and errors
def test_optimizers_json_lists_each_implementation_and_version(capsys):
    code, out, _ = run(["optimizers", "--json"], capsys)
    rows = {r["id"]: r for r in json.loads(out)["optimizers"]}
    assert code == 0
    assert "bitsandbytes 0.50.2" in rows["adamw8bit"]["reproduces"]
    assert "torchao 0.18.0" in rows["adamw8bit"]["impls"]["torchao"]["reproduces"]
    assert rows["coap"]["requires"]["source"].startswith("git+https://github.com/bytedance/coap")
    assert rows["adam-mini"]["binds"] == {"dim": "hidden_size", "n_heads": "num_attention_heads",
                                          "n_kv_heads": "num_key_value_heads"}
    assert rows["galore"]["target_rule"] and rows["sgd"]["target_rule"] is None


@pytest.mark.parametrize("value, needle", [
    ("galor", "did you mean galore"),
    ("apolo-mini", "did you mean apollo-mini"),
    ("galore:rnk=4", "did you mean rank?"),
    ("galore:rank=0", "valid [1, inf)"),
    ("galore:update_proj_gap=-5", "valid [1, inf)"),
    ("adamw8bit:impl=apex", "must be one of bitsandbytes, torchao"),
    ("adam-mini:dim=wide", "expected a whole number or none"),
    ("sgd:momentum=-0.9", "valid [0, inf)"),
])
def test_bad_ids_exit_2_with_one_line(value, needle, capsys):
    code, out, err = run(["resnet18", "-o", value, "--json"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, err


# --------------------------------------------------------------------------- Muon + AdamW
def test_muon_with_adamw_is_one_optimizer():
    from smmf_plan.optimizers.muon_adamw import MuonWithAdamW

    w, b = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))
    opt = parse("muon").build([(ParamSpec("w", (8, 4), linear=True), w), (ParamSpec("b", (4,)), b)])
    assert isinstance(opt, MuonWithAdamW) and len(opt.param_groups) == 2
    assert opt.param_groups[0]["use_muon"] and opt.param_groups[0]["params"] == [w]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt._muon.param_groups[0]["lr"] == 0.01 and opt._adamw.param_groups[0]["lr"] == 1.5e-4
    for p in (w, b):
        p.grad = torch.randn_like(p)
    opt.step()
    sched.step()
    assert set(opt.state[w]) == {"momentum_buffer"} and set(opt.state[b]) == {"step", "exp_avg", "exp_avg_sq"}
    again = parse("muon").build([(ParamSpec("w", (8, 4), linear=True), w), (ParamSpec("b", (4,)), b)])
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state[w]["momentum_buffer"], opt.state[w]["momentum_buffer"])
    assert again._adamw.state is again.state


# --------------------------------------------------------------------------- the CI gate
def _check(tmp_path, monkeypatch, capsys, body, shapes=None):
    import numpy as np
    from safetensors.numpy import save_file

    monkeypatch.chdir(tmp_path)
    shapes = shapes or {"block.proj.weight": (64, 32), "block.proj.bias": (64,), "head.weight": (10, 64)}
    save_file({k: np.zeros(v, np.float32) for k, v in shapes.items()}, str(tmp_path / "tiny.safetensors"))
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.smmf-plan]\n[[tool.smmf-plan.checks]]\nname = "t"\n'
        'model = "tiny.safetensors"\n' + body)
    return run(["check", "--json"], capsys)


def test_a_check_takes_target_globs(tmp_path, monkeypatch, capsys):
    code, out, _ = _check(tmp_path, monkeypatch, capsys, 'optimizer = ["galore:rank=4"]\n')
    (r,) = json.loads(out)["results"]
    # name rule: block.proj.weight is targeted (64 ≥ 32: Vh[:4] of the 32×32 fp32 Vh, moments 64×4);
    # the bias and the head (by its name) take AdamW
    assert code == 0 and r["now_bytes"] == 4 * (32 * 32 + 2 * 64 * 4) + 8 * 64 + 8 * 640
    code, out, _ = _check(tmp_path, monkeypatch, capsys,
                          'optimizer = ["galore:rank=4"]\ntarget = ["head.*"]\n')
    (r,) = json.loads(out)["results"]
    # now only the head: 10 < 64, U[:, :4] of the 10×10 fp32 U, moments 4×64; the rest AdamW
    assert code == 0 and r["now_bytes"] == 4 * (10 * 10 + 2 * 4 * 64) + 8 * 2048 + 8 * 64


def test_a_check_naming_an_optimizer_that_cannot_run_fails_with_the_reason(tmp_path, monkeypatch, capsys):
    shapes = {"attention.output.dense.weight": (32, 32), "attention.output.LayerNorm.weight": (32,)}
    code, out, err = _check(tmp_path, monkeypatch, capsys, 'optimizer = ["adam-mini"]\n', shapes)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "adam-mini cannot train" in err and "attention.output.LayerNorm.weight" in err


# --------------------------------------------------------------------------- distributed plans
def test_zoo_optimizers_under_sharding():
    """Under FSDP2 a shard keeps the facts of its parameter (a GaLore-targeted weight's shard is
    still GaLore's, with its local shape); ZeRO's flat partitions keep neither shapes nor names,
    so shape- and name-based optimizers are not planned there, with the reason."""
    from smmf_plan.dist import Context, Sharding, plan_ranks

    specs = (ParamSpec("layers.0.mlp.up.weight", (64, 32), linear=True), ParamSpec("norm.weight", (64,)))
    ctx = Context(specs)
    (fsdp,) = plan_ranks(ctx, Sharding("fsdp2", 2), parse("galore:rank=4"))
    # each rank: rows 32 of the 64×32 weight (32 ≥ 32: Vh[:4] of the fp32 32×32 Vh, moments 32×4)
    # and 32 elements of the norm (GaLoreAdamW's plain group: two moments, a Python-int step)
    assert fsdp.figures.state_bytes == 4 * (32 * 32 + 2 * 32 * 4) + 2 * 4 * 32
    for oid in ("galore", "apollo", "coap", "muon", "adam-mini", "adalayer"):
        with pytest.raises(Unsupported, match="not planned under ZeRO"):
            plan_ranks(ctx, Sharding("zero2", 2), parse(oid))
    assert plan_ranks(ctx, Sharding("zero3", 2), parse("lion"))  # flat tensors are fine for it
