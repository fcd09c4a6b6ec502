"""Tracing a training step of every model family the bundled and tested configs cover, with and
without gradient checkpointing: causal LMs, encoders, encoder-decoders, a vision transformer, a
speech encoder-decoder, a contrastive image-text model and a question-answering head.

Each model is a real transformers class built from a small config written here (or a bundled
config with its layers cut to two), on the meta device. Each gets the batch its task trains on
(pixel values, input features, decoder labels, start/end positions), and checkpointing must lower
the estimate. A model that cannot be traced is an incomplete estimate with a reason, never a zero.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers as tf

from allocations import tensor_peak
from smmf_plan.errors import PlanError
from smmf_plan.memory import estimate, spec_of_module
from smmf_plan.optimizers import parse_many
from smmf_plan.recipe import Recipe
from smmf_plan.sources import registry
from smmf_plan.sources.hf_config import build
from smmf_plan.tasks import (
    CAUSAL_LM,
    CONTRASTIVE,
    IMAGE_CLASSIFICATION,
    MASKED_LM,
    QUESTION_ANSWERING,
    SEQ2SEQ_LM,
    SPEECH_SEQ2SEQ,
)
from smmf_plan.trace import attention, input_spec_for, trace_step
from smmf_plan.trace.step import default_loss

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=101)

TESTED = {
    "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=101,
                                               n_positions=64), CAUSAL_LM),
    "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(num_hidden_layers=2, num_key_value_heads=2,
                                                  max_position_embeddings=64, **SMALL), CAUSAL_LM),
    "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config(num_hidden_layers=2, num_key_value_heads=2,
                                                  max_position_embeddings=64, **SMALL), CAUSAL_LM),
    "bert": (tf.BertForMaskedLM, tf.BertConfig(num_hidden_layers=2, max_position_embeddings=64,
                                               **SMALL), MASKED_LM),
    "t5": (tf.T5ForConditionalGeneration,
           tf.T5Config(num_layers=2, d_model=64, d_ff=128, num_heads=4, d_kv=16, vocab_size=101,
                       decoder_start_token_id=0, pad_token_id=0), SEQ2SEQ_LM),
    "vit": (tf.ViTForImageClassification,
            tf.ViTConfig(num_hidden_layers=2, image_size=32, patch_size=8, num_labels=5,
                         **{k: v for k, v in SMALL.items() if k != "vocab_size"}), IMAGE_CLASSIFICATION),
    "whisper": (tf.WhisperForConditionalGeneration,
                tf.WhisperConfig(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128,
                                 decoder_ffn_dim=128, encoder_attention_heads=4,
                                 decoder_attention_heads=4, vocab_size=101, num_mel_bins=16,
                                 max_source_positions=32, max_target_positions=32, pad_token_id=0,
                                 bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
                SPEECH_SEQ2SEQ),
    "clip": (tf.CLIPModel,
             tf.CLIPConfig(text_config=dict(num_hidden_layers=2, max_position_embeddings=32, **SMALL),
                           vision_config=dict(num_hidden_layers=2, image_size=32, patch_size=8,
                                              **{k: v for k, v in SMALL.items() if k != "vocab_size"}),
                           projection_dim=32), CONTRASTIVE),
    "deberta-qa": (tf.DebertaV2ForQuestionAnswering,
                   tf.DebertaV2Config(num_hidden_layers=2, max_position_embeddings=64, **SMALL),
                   QUESTION_ANSWERING),
}

#: the layer-count keys of the bundled configs, cut to four layers (the code path per layer is
#: what checkpointing changes; depth only multiplies it, and four layers at 128 tokens already
#: outweigh the embeddings' and the head's transients, which checkpointing does not touch).
LAYER_KEYS = ("n_layer", "num_hidden_layers", "num_layers", "num_decoder_layers", "encoder_layers",
              "decoder_layers", "n_layers")


def _meta_factory(cls, config):
    def make():
        with torch.device("meta"):
            return cls(copy.deepcopy(config))
    return make


def _activations(make, *, checkpointing: bool, batch: int = 8, **kw) -> tuple[int, int]:
    spec = spec_of_module(make(), "m")
    est = estimate(spec, parse_many("adam"), batch_size=batch, module_factory=make,
                   recipe=Recipe(grad_checkpointing=checkpointing), **kw)
    assert est.complete, est.assumptions
    step = est.steps()["adam"]
    # the whole step on a CPU device, the default glibc model's allocator part included (the heap
    # blocks recomputation allocates one layer at a time refill each other's holes)
    assert step.breakdown["allocator"] > 0
    return step.breakdown["activations"], step.total_bytes


@pytest.mark.parametrize("family", list(TESTED))
def test_checkpointing_lowers_every_tested_family(family):
    cls, config, task = TESTED[family]
    make = _meta_factory(cls, config)
    assert input_spec_for(make(), 2).task == task
    kw = {} if task == IMAGE_CLASSIFICATION else {"seq_len": 32}
    act, total = _activations(make, checkpointing=False, **kw)
    act_ckpt, total_ckpt = _activations(make, checkpointing=True, **kw)
    assert 0 < act_ckpt < act and total_ckpt < total


@pytest.mark.parametrize("family", list(TESTED))
def test_checkpointed_trace_equals_the_real_steps_tensor_peak(family):
    """The meta trace with checkpointing (recomputation in backward included) against a real CPU
    step of the same model with transformers' non-reentrant checkpointing, measured by torch's
    profiler (tests/allocations.py). Llama's grouped-query attention takes the CPU flash kernel
    in both. (The ViT at batch 2 has its peak at the last gradients, the same with or without
    checkpointing: batch 8 shows the recomputation.)"""
    cls, config, task = TESTED[family]
    batch = 8 if family == "vit" else 2
    make = _meta_factory(cls, config)
    spec = input_spec_for(make(), batch, seq_len=None if task == IMAGE_CLASSIFICATION else 32)
    traced = trace_step(make(), spec, grad_checkpointing=True)
    torch.manual_seed(0)
    real = cls(copy.deepcopy(config))
    real.train()
    if hasattr(real, "activation_checkpointing_enable"):  # transformers 5 (the older name warns)
        real.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        real.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def step():
        args, kwargs, target = spec.make("cpu")
        out = real(*args, **kwargs)  # held through backward, as a training loop holds it
        default_loss(out, target).backward()

    measured = tensor_peak(step)
    assert abs(traced.peak_bytes["raw"] - measured) <= 0.005 * measured


def _bundled(name: str) -> dict:
    cfg = copy.deepcopy(registry.bundled_config(name))
    for key in LAYER_KEYS:
        if isinstance(cfg.get(key), int):
            cfg[key] = min(cfg[key], 4)
    return cfg


@pytest.mark.parametrize("name", [n for n in registry.bundled_models() if n != "albert-base-v2"])
def test_checkpointing_lowers_every_bundled_config(name):
    cfg = _bundled(name)

    def make():
        return build(cfg, device="meta")[0]

    act, total = _activations(make, checkpointing=False, seq_len=128)
    act_ckpt, total_ckpt = _activations(make, checkpointing=True, seq_len=128)
    assert 0 < act_ckpt < act and total_ckpt < total


def test_a_model_without_checkpointing_says_so_in_one_line():
    cfg = _bundled("albert-base-v2")

    def make():
        return build(cfg, device="meta")[0]

    with pytest.raises(PlanError, match="does not support gradient checkpointing") as e:
        _activations(make, checkpointing=True, seq_len=16)
    assert "\n" not in str(e.value) and "drop --grad-checkpointing" in str(e.value)


def test_inputs_per_task():
    """The batch each task trains on, as its config describes it."""
    whisper = _meta_factory(*TESTED["whisper"][:2])()
    s = input_spec_for(whisper, 3, seq_len=20)
    _, kw, _ = s.make("meta")
    assert kw["input_features"].shape == (3, 16, 64)  # mel bins x 2 * max_source_positions
    assert kw["labels"].shape == (3, 20) and s.describe() == "batch 3 · 16×64 features + seq_len 20"
    clip = _meta_factory(*TESTED["clip"][:2])()
    _, kw, _ = input_spec_for(clip, 2).make("meta")
    assert kw["pixel_values"].shape == (2, 3, 32, 32) and kw["input_ids"].shape == (2, 32)
    assert kw["return_loss"] is True
    qa = _meta_factory(*TESTED["deberta-qa"][:2])()
    _, kw, _ = input_spec_for(qa, 2, seq_len=16).make("meta")
    assert kw["start_positions"].shape == kw["end_positions"].shape == (2,)
    vit = _meta_factory(*TESTED["vit"][:2])()
    s = input_spec_for(vit, 2, input_size="3,48,48")  # --input-size for a transformers ViT
    _, kw, _ = s.make("meta")
    assert kw["pixel_values"].shape == (2, 3, 48, 48) and kw["labels"].shape == (2,)
    assert dict(s.extra) == {"interpolate_pos_encoding": True}
    with pytest.raises(PlanError, match="--seq-len is for text models"):
        input_spec_for(vit, 2, seq_len=16)
    with pytest.raises(PlanError, match="speech model"):
        input_spec_for(whisper, 2, input_size="3,32,32")


def test_a_transformers_vit_at_another_input_size_traces():
    make = _meta_factory(*TESTED["vit"][:2])
    act_small, _ = _activations(make, checkpointing=False, input_size=(3, 32, 32))
    act_large, _ = _activations(make, checkpointing=False, input_size=(3, 64, 64))
    assert act_large > act_small


def test_weights_without_a_config_are_an_incomplete_estimate(tmp_path):
    """No architecture: activations not known (null), never a silent zero; the fit is not known."""
    from safetensors.torch import save_file

    from smmf_plan.sources import load_model

    save_file({"w": torch.zeros(64, 32), "b": torch.zeros(64)}, tmp_path / "w.safetensors")
    spec = load_model(str(tmp_path / "w.safetensors"), use_cache=False)
    est = estimate(spec, parse_many("adam"), batch_size=4)
    assert not est.complete and "no architecture" in est.incomplete_reason
    d = est.to_dict()["optimizers"]["adam"]
    assert d["breakdown"]["activations"] is None and d["complete"] is False


def _cli(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMMF_PLAN_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "smmf_plan", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_no_stray_warnings_on_stderr(tmp_path):
    """A causal LM with checkpointing, traced in a fresh process (transformers imported there):
    the table on stdout, nothing on stderr."""
    _, config, _ = TESTED["gpt2"]
    cfg = {**config.to_dict(), "architectures": ["GPT2LMHeadModel"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = _cli(tmp_path, str(tmp_path / "config.json"), "--grad-checkpointing", "--seq-len", "32",
             "-o", "adam", "--device", "4GiB")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "gradient checkpointing" in r.stdout


def test_weights_only_cli_reports_unknowns(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 32)}, tmp_path / "w.safetensors")
    r = _cli(tmp_path, str(tmp_path / "w.safetensors"), "--device", "rpi-4-4gb", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    adam = doc["optimizers"]["adam"]
    assert adam["breakdown"]["activations"] is None
    assert (adam["fits"], adam["headroom_bytes"], adam["max_batch_size"]) == (None, None, None)
    assert doc["training"]["complete"] is False and "no architecture" in doc["training"]["incomplete_reason"]
    assert "not known" in doc["recommendation"]
    r = _cli(tmp_path, str(tmp_path / "w.safetensors"), "--device", "rpi-4-4gb")
    flat = " ".join(r.stdout.split())
    assert "Activations not known" in flat and "?" in flat and "whether" in flat


def test_the_first_attention_trace_in_a_process_logs_only_the_models_allocations():
    """The attention kernel choice is asked of the CPU build once per setup, on tiny real tensors
    made outside the trace: the first trace of a setup logs the same allocations as the next."""
    cls, config, task = TESTED["llama"]
    make = _meta_factory(cls, config)
    spec = input_spec_for(make(), 2, seq_len=32)
    attention._SDP_CACHE.clear()
    first = trace_step(make(), spec)
    second = trace_step(make(), spec)
    assert first.log.events == second.log.events
    assert first.peak_bytes == second.peak_bytes
