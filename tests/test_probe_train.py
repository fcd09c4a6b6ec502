"""The worker's measurement on real small models, in-process (the subprocess only adds isolation):
measured optimizer-state bytes equal the planned bytes exactly for every optimizer, and the loss is
finite and falls over the steps on the fixed batch with the probe's per-optimizer learning rates
(the registry's ``probe_lr``). torchao's optimizers compile their step with ``torch.compile``;
here the compiled function runs eagerly (compiling every shape of a CNN on two cores would take
minutes; the arithmetic and the state are the same)."""

from __future__ import annotations

import functools
import json
import math

import pytest

from smmf_plan.optimizers import ALL_IDS, parse
from smmf_plan.plan import plan_state
from smmf_plan.probe.job import ProbeJob
from smmf_plan.probe.worker import run_job
from smmf_plan.sources import load_model

STEPS = 4
#: every id of ``--optimizer all`` whose implementation a package registry has (the test extra
#: installs them all); COAP and Adalayer, no package registry has, are checked for the message.
RUNNABLE = tuple(i for i in ALL_IDS if parse(i).requires.source is None)
FROM_SOURCE = tuple(i for i in ALL_IDS if parse(i).requires.source is not None)

TINY_GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 211,
             "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "bos_token_id": 0,
             "eos_token_id": 0}
TINY_BERT = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 211,
             "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "max_position_embeddings": 64}
TINY_T5 = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": 211,
           "is_encoder_decoder": True,
           "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 2,
           "decoder_start_token_id": 0, "pad_token_id": 0}


@functools.lru_cache(maxsize=None)
def _spec(kind: str, tmp: str):
    if kind == "cnn":  # a small real CNN: depthwise, pointwise, SE, BN, 10 classes
        return load_model("mobilenetv3_small_050", num_classes=10, use_cache=False)
    cfg = {"gpt2": TINY_GPT2, "bert": TINY_BERT, "t5": TINY_T5}[kind]
    path = f"{tmp}/{kind}/config.json"
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return load_model(path, use_cache=False)


@functools.lru_cache(maxsize=None)
def _run(kind: str, optimizer: str, tmp: str):
    spec = _spec(kind, tmp)
    extra = {"input_size": [3, 32, 32]} if kind == "cnn" else {"seq_len": 16}
    job = ProbeJob(model=spec.to_dict(), optimizer=optimizer, steps=STEPS, batch_size=4,
                   num_threads=1, **extra)
    return spec, run_job(job)


@pytest.fixture(autouse=True)
def eager_torch_compile(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: fn)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("probe-models"))


@pytest.mark.parametrize("optimizer", RUNNABLE)
@pytest.mark.parametrize("kind", ["cnn", "gpt2"])
def test_measured_state_bytes_equal_the_plan(kind, optimizer, tmp):
    spec, res = _run(kind, optimizer, tmp)
    assert res["status"] == "ok", res.get("error")
    planned = plan_state(spec.params, parse(optimizer).bind(spec.facts)).state_bytes
    assert res["measured"]["state_bytes"] == planned


@pytest.mark.parametrize("optimizer", RUNNABLE)
@pytest.mark.parametrize("kind", ["cnn", "gpt2"])
def test_loss_is_finite_and_falls_on_a_fixed_batch(kind, optimizer, tmp):
    _, res = _run(kind, optimizer, tmp)
    losses = res["measured"]["losses"]
    assert len(losses) == STEPS
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses


def test_an_implementation_from_source_only_is_reported_not_run(tmp):
    assert set(FROM_SOURCE) == {"coap", "adalayer"}
    for oid in FROM_SOURCE:
        _, res = _run("gpt2", oid, tmp)
        assert res["status"] == "error" and res["at_step"] == 0 and "measured" not in res
        assert res["error"].startswith(f"{oid} needs ") and "not on PyPI" in res["error"]


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_masked_and_seq2seq_batches_train(kind, tmp):
    spec, res = _run(kind, "smmf", tmp)
    assert res["status"] == "ok", res.get("error")
    assert res["input"]["task"] == {"bert": "masked-lm", "t5": "seq2seq-lm"}[kind]
    m = res["measured"]
    assert m["state_bytes"] == plan_state(spec.params, parse("smmf")).state_bytes
    assert m["losses"][-1] < m["losses"][0]


def test_timings_exclude_the_first_step(tmp):
    _, res = _run("cnn", "adam", tmp)
    m = res["measured"]
    assert m["timing_excludes_first_step"] is True
    assert m["step_ms"] > 0 and m["optimizer_step_ms"] > 0
    spec = _spec("cnn", tmp)
    one = run_job(ProbeJob(model=spec.to_dict(), optimizer="adam", steps=1, batch_size=2,
                           input_size=[3, 32, 32], num_threads=1))
    assert one["status"] == "ok"
    assert one["measured"]["step_ms"] is None and one["measured"]["optimizer_step_ms"] is None
    assert len(one["measured"]["losses"]) == 1
