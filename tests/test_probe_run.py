"""The probe end to end, in subprocesses: a MobileNet-sized model at batch 2 through the CLI (JSON
schema, exact state, report file), and out-of-memory under a cap reported as status "oom" with the
step, while the other optimizers still run."""

from __future__ import annotations

import json
import math

import pytest

import smmf_plan.cli.probe  # noqa: F401  (registers the command)
from smmf_plan.cli import main
from smmf_plan.optimizers import parse_many
from smmf_plan.plan import plan_state
from smmf_plan.probe.runner import run_probe
from smmf_plan.sources import load_model

MiB = 2**20


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_probe_mobilenet_batch_2_json_and_report(tmp_path, capsys):
    report = tmp_path / "probe.md"
    code, out, err = _cli(["probe", "mobilenetv2_050", "--optimizer", "smmf,adam", "--steps", "3",
                           "--batch-size", "2", "--input-size", "3,64,64", "--json",
                           "--report", str(report)], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 2
    assert doc["model"]["name"] == "mobilenetv2_050"
    assert doc["input"] == {"task": "image-classification", "batch_size": 2, "input_size": [3, 64, 64]}
    assert list(doc["optimizers"]) == ["smmf", "adam"]
    spec = load_model("mobilenetv2_050")
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model("mobilenetv2_050")
    aligned = lambda ts: sum(-(-t.numel() * t.element_size() // 64) * 64 for t in ts)  # noqa: E731
    for oid, e in doc["optimizers"].items():
        p = e["predicted"]
        assert p["total_bytes"] == sum(p["breakdown"].values()) and p["allocator"] == "glibc-mmap"
        assert p["breakdown"]["weights"] == aligned(model.parameters()) + aligned(model.buffers())
        assert p["breakdown"]["grads"] == aligned(model.parameters())
        assert p["breakdown"]["state_allocated"] >= p["state_bytes"]
        # the peak compared with the measurement leaves out the runtime present before it
        assert 0 < p["peak_bytes"] < p["total_bytes"]
        assert set(e) >= {"predicted", "measured", "error_pct", "status"}
        assert e["status"] == "ok", e.get("error")
        m = e["measured"]
        assert set(m) >= {"state_bytes", "peak_bytes", "step_ms", "optimizer_step_ms", "losses"}
        planned = plan_state(spec.params, parse_many(oid)[0]).state_bytes
        assert m["state_bytes"] == e["predicted"]["state_bytes"] == planned
        assert e["error_pct"]["state_bytes"] == 0.0
        assert len(m["losses"]) == 3 and all(math.isfinite(x) for x in m["losses"])
        # the peak holds at least the weights, gradients and optimizer state
        assert m["peak_bytes"] >= 2 * doc["model"]["param_bytes"] + m["state_bytes"]
        assert m["step_ms"] > 0 and m["optimizer_step_ms"] > 0
    from rich.console import Console

    from smmf_plan.report.probe_report import probe_table

    console = Console(width=100, no_color=True, record=True, file=open("/dev/null", "w"))
    console.print(probe_table(doc))
    shown = console.export_text()
    assert "mobilenetv2_050" in shown and shown.count("✓ ok") == 2  # words, not only colour
    text = report.read_text()
    assert text.startswith("# Probe: mobilenetv2_050 on cpu")
    assert "smmf-plan probe mobilenetv2_050 --optimizer smmf,adam" in text
    assert "| smmf | ✓ ok |" in text and "| adam | ✓ ok |" in text
    # the predicted breakdown: a column per part, the total its sum
    assert "| optimizer | weights | grads | state | activ. | temp. | runtime | total |" in text
    for oid, e in doc["optimizers"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {oid} | ")
                   and line.count("|") == 9)
        assert row.split("|")[-2].strip() == f"{e['predicted']['total_bytes'] / MiB:,.1f}"


def test_oom_under_a_cap_is_a_verdict_and_the_others_still_run():
    # a small CNN whose weights fit in 160 MiB but whose activations at 64×3×224×224 do not
    spec = load_model("mobilenetv3_small_050", num_classes=10, use_cache=False)
    doc = run_probe(spec, parse_many("adam,smmf"), steps=2, batch_size=64,
                    input_size=[3, 224, 224], cap_bytes=160 * MiB, progress=False)
    assert doc["settings"]["cap_method"] == "rlimit_as"
    for oid in ("adam", "smmf"):
        e = doc["optimizers"][oid]
        assert e["status"] == "oom", e
        assert e["at_step"] == 1
        assert e["verdict"] == "does not fit (OOM at step 1)"
        assert e["cap"]["cap_bytes"] == 160 * MiB
    # a cap too small to even build the model: OOM before step 1
    tiny = run_probe(spec, parse_many("sm3"), steps=2, batch_size=2, input_size=[3, 32, 32],
                     cap_bytes=64 * 1024, progress=False)
    e = tiny["optimizers"]["sm3"]
    assert e["status"] == "oom" and e["at_step"] == 0
    assert e["verdict"] == "does not fit (OOM while building the model and optimizer)"


def test_a_transformers_model_under_a_cap_runs_to_the_end(tmp_path):
    # transformers imports scipy (OpenBLAS) lazily while building a model; under RLIMIT_AS its
    # thread init spins forever if that happens after the cap: the worker must import first
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 211,
           "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "bos_token_id": 0,
           "eos_token_id": 0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    spec = load_model(str(path), use_cache=False)
    doc = run_probe(spec, parse_many("smmf"), steps=2, batch_size=2, seq_len=16,
                    cap_bytes=256 * MiB, progress=False, timeout_s=240)
    e = doc["optimizers"]["smmf"]
    assert e["status"] == "ok", e.get("error")
    assert e["verdict"] == "fits"
    assert doc["input"] == {"task": "causal-lm", "batch_size": 2, "seq_len": 16}


def test_bad_input_is_one_line_exit_2(capsys):
    fast = ["--optimizer", "smmf", "--steps", "1", "--json"]  # bounded even if a check regressed
    code, _, err = _cli(["probe", "mobilenetv2_050", "--input-size", "3,64", *fast], capsys)
    assert code == 2 and err.startswith("error: --input-size") and err.count("\n") == 1
    code, _, err = _cli(["probe", "mobilenetv2_050", "--seq-len", "16", *fast], capsys)
    assert code == 2 and "--seq-len is for language models" in err
    code, _, err = _cli(["probe", "mobilenetv2_050", "--device", "rpi-zer0", *fast], capsys)
    assert code == 2 and err.startswith("error: unknown device")
    code, _, err = _cli(["probe", "mobilenetv2_050", "--device-type", "tpu", *fast], capsys)
    assert code == 2 and "--device-type 'tpu'" in err
