"""What would fit: each change named is planned for real, and planning it again fits."""

from __future__ import annotations

import json
import os

import pytest

from cli_run import isolated_cache, run  # noqa: F401 - isolated_cache is an autouse fixture
from smmf_plan.alternatives import ORDER, lora_targets
from smmf_plan.sources.cache import cache_dir

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
         "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64}


@pytest.fixture
def llama(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA))
    return str(path)


def _plan(args, capsys) -> dict:
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def _replan(base: list[str], device: str, change_args: str) -> list[str]:
    """``base`` with the change applied: its options replace the base's (-b, -o, -d)."""
    extra = change_args.split()
    out, i = [], 0
    replaced = {extra[j] for j in range(0, len(extra)) if extra[j].startswith("-")}
    while i < len(base):
        if base[i] in replaced:
            i += 2
            continue
        out.append(base[i])
        i += 1
    if "-d" not in replaced:
        out += ["-d", device]
    return out + extra


def _check_found(doc: dict, oid: str, base: list[str], capsys) -> dict:
    """The change found is the first in ORDER that fits; every change tried before it was
    skipped or planned not to fit; planning it again gives the same total, and it fits."""
    w = doc["optimizers"][oid]["would_fit"]
    assert w is not None and w["change"] in ORDER
    ranks = [ORDER.index(t["change"]) for t in w["tried"]]
    assert ranks == sorted(ranks)
    for t in w["tried"][:-1]:
        assert t.get("skipped") or t["fits"] is False, t
    assert w["tried"][-1]["change"] == w["change"] and w["tried"][-1]["fits"] is True
    again = _plan(_replan(base, w["device"], w["args"]), capsys)
    o = again["optimizers"][w["change"] == "smmf" and "smmf" or oid]
    assert o["fits"] is True and o["total_bytes"] == w["total_bytes"], (w, o["total_bytes"])
    assert o["headroom_bytes"] == w["headroom_bytes"]
    return w


def test_a_smaller_batch_is_named_first_and_fits_when_planned(llama, capsys):
    base = [llama, "-o", "adam", "--seq-len", "32", "-b", "64"]
    at = {b: _plan([*base[:-1], str(b)], capsys)["optimizers"]["adam"]["total_bytes"] for b in (8, 64)}
    device = f"{(at[8] + at[64]) // 2}B"
    doc = _plan([*base, "-d", device], capsys)
    o = doc["optimizers"]["adam"]
    assert o["fits"] is False and 8 <= o["max_batch_size"] < 64
    w = _check_found(doc, "adam", [*base, "-d", device], capsys)
    assert w["change"] == "batch" and w["args"] == f"-b {o['max_batch_size']}"
    assert [t["change"] for t in w["tried"]] == ["batch"]  # nothing else planned once it fits
    assert "to fit: adam -b" in doc["recommendation"]


def test_when_batch_1_does_not_fit_the_next_change_is_planned(llama, capsys):
    base = [llama, "-o", "adam", "--seq-len", "32", "-b", "1"]
    total = _plan(base, capsys)["optimizers"]["adam"]["total_bytes"]
    device = f"{total - 1}B"
    doc = _plan([*base, "-d", device], capsys)
    assert doc["optimizers"]["adam"]["fits"] is False
    w = _check_found(doc, "adam", [*base, "-d", device], capsys)
    assert w["tried"][0] == {"change": "batch", "args": "-b 1", "total_bytes": total,
                             "fits": False, "max_batch_size": 0}
    assert w["change"] not in ("batch", "device")
    code, out, err = run([*base, "-d", device], capsys)
    assert code == 0 and "What would fit" in out and f"to fit: adam {w['args']}" in " ".join(out.split())


def test_another_device_when_no_change_is_enough(llama, capsys):
    base = [llama, "-o", "adam", "--seq-len", "32", "-b", "1"]
    doc = _plan([*base, "-d", "rpi-zero"], capsys)  # the runtime alone exceeds its 383 MiB
    w = _check_found(doc, "adam", [*base, "-d", "rpi-zero"], capsys)
    assert w["change"] == "device" and w["device"] != "rpi-zero"
    assert all(t.get("skipped") or t["fits"] is False for t in w["tried"][:-1])
    assert {"batch", "grad-checkpointing", "smmf", "lora"} <= {t["change"] for t in w["tried"]}
    # PyTorch does not train on a Pi Zero: no change to the run is planned there, only devices
    between = w["tried"][1:-1]
    assert between and all(t["skipped"].startswith("PyTorch does not run on rpi-zero (ARMv6")
                           and t["total_bytes"] is None for t in between)


def test_plans_that_fit_have_no_alternatives(llama, capsys):
    doc = _plan([llama, "-o", "adam,smmf", "--seq-len", "32", "-d", "h100-80gb"], capsys)
    assert all(o["fits"] and o["would_fit"] is None for o in doc["optimizers"].values())
    doc = _plan([llama, "-o", "adam", "--seq-len", "32"], capsys)  # no device: no verdict
    assert "would_fit" not in doc["optimizers"]["adam"]


def test_lora_targets_are_pefts_defaults_where_the_model_has_them():
    assert lora_targets(["model.layers.0.self_attn.q_proj.weight",
                         "model.layers.0.self_attn.v_proj.weight"]) == ("q_proj", "v_proj")
    assert lora_targets(["h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias"]) == ("c_attn",)
    assert lora_targets(["conv1.weight", "fc.weight"]) is None


def test_accumulation_offload_and_qlora_are_candidates_planned_under_their_recipe(llama):
    """The recipe changes are candidates in ORDER, skipped where they cannot apply, and each one
    planned for real changes the step the way its recipe says."""
    from smmf_plan.alternatives import _candidates, planner
    from smmf_plan.devices import get_device
    from smmf_plan.options import ModelOptions, StepOptions

    m = ModelOptions(model=llama, optimizers=("adam",))
    step = StepOptions(batch_size=4, seq_len=32)
    spec = m.load(m.recipe(step))
    gpu = get_device("t4")
    cands = {c[0]: c for c in _candidates(m, step, spec, gpu)}
    assert [c for c in ORDER if c in cands] == list(cands)  # tried in ORDER
    assert ORDER.index("batch") < ORDER.index("grad-accum") < ORDER.index("grad-checkpointing")
    assert ORDER.index("lora") < ORDER.index("qlora") < ORDER.index("combined")
    assert all(cands[c][4] is None for c in ("grad-accum", "offload", "qlora"))
    assert cands["grad-accum"][1] == "-b 1 --grad-accum 4"
    assert cands["qlora"][1] == "--quantize-base nf4 --lora-rank 8 --lora-targets q_proj,v_proj"
    # where they cannot apply: batch 1, a device without its own host, a quantized base already
    skip = {c[0]: c[4] for c in _candidates(m, StepOptions(batch_size=1, seq_len=32), spec,
                                            get_device("rpi-5-8gb"))}
    assert skip["grad-accum"] and "no host memory" in skip["offload"]
    q = ModelOptions(model=llama, optimizers=("adam",), lora_rank=8, lora_targets=("q_proj", "v_proj"),
                     quantize_base="nf4")
    assert "already" in {c[0]: c[4] for c in _candidates(q, step, spec, gpu)}["qlora"]

    plan = planner("cuda")
    base = plan(m, step)["adam"].breakdown
    _, _, cm, cs, _ = cands["grad-accum"]
    accum = plan(cm, cs)["adam"].breakdown
    assert accum["activations"] < base["activations"] and accum["state_allocated"] == base["state_allocated"]
    _, _, cm, cs, _ = cands["offload"]
    traces = os.path.join(cache_dir(), "activations")
    traced = set(os.listdir(traces))
    off = plan(cm, cs)["adam"].breakdown
    assert off["host_state"] > 0 and off["state_allocated"] < base["state_allocated"]
    # the optimizer's state on the host leaves the device's step as it is: its trace is shared
    assert set(os.listdir(traces)) == traced and off["activations"] == base["activations"]
    _, _, cm, cs, _ = cands["qlora"]
    ql = plan(cm, cs)["adam"].breakdown
    lora = plan(*cands["lora"][2:4])["adam"].breakdown
    assert ql["weights"] < lora["weights"] and ql["state_allocated"] == lora["state_allocated"]
