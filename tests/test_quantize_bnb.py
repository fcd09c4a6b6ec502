"""A quantized base's bytes, tensor by tensor, against bitsandbytes' real quantized modules on CPU.

Each model is saved with random weights, loaded by transformers with a ``BitsAndBytesConfig`` on
the CPU (bitsandbytes quantizes there), and every tensor the loaded model holds — parameters,
buffers, and the quantization state hanging off ``Params4bit.quant_state`` / ``Int8Params.SCB`` — is
listed with its shape and dtype. The planner's list for the same model, config and recipe must be
the same tensors (the same layers quantized, the same layers left alone), byte for byte.
"""

from __future__ import annotations

import warnings

import bitsandbytes as bnb
import pytest
import torch
from transformers import BitsAndBytesConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from smmf_plan.errors import PlanError
from smmf_plan.memory import spec_of_module
from smmf_plan.quantize import quantized_tensors, quantized_weights, stored_tensors
from smmf_plan.recipe import Recipe
from smmf_plan.shapes import ParamSpec
from smmf_plan.sources.lora import apply_lora

LLAMA = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=176, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=101, max_position_embeddings=64)
# n_embd 40: 40*120 = 4800 elements, not a multiple of 64 (a partial last block)
GPT2 = GPT2Config(n_layer=2, n_embd=40, n_head=2, vocab_size=97, n_positions=32)


def _real_tensors(model) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor the loaded model holds, by a name shaped like the planner's."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    seen: set[int] = set()

    def add(name, t):
        key = t.untyped_storage().data_ptr()
        if key in seen:  # tied / shared storages once, as the allocator holds them
            return
        seen.add(key)
        out[name] = (tuple(t.shape), t.dtype)

    for name, p in model.named_parameters():
        add(name, p)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            add(f"{name}.absmax", qs.absmax)
            add(f"{name}.quant_map", qs.code)
            if qs.nested:
                add(f"{name}.offset", qs.offset)
                add(f"{name}.nested_absmax", qs.state2.absmax)
                add(f"{name}.nested_quant_map", qs.state2.code)
        scb = getattr(p, "SCB", None)
        if scb is not None:
            add(f"{name}.SCB", scb)
    for name, b in model.named_buffers():
        add(name, b)
    return out


def _planned(module_cls, config, recipe: Recipe) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        meta = module_cls(config)
    spec = spec_of_module(meta)
    spec.params = [p.__class__(p.name, p.shape, p.dtype, False, p.aliases) for p in spec.params]
    planned = recipe.apply(spec)
    quantized = quantized_weights(meta, planned.params, recipe.quantize_base)
    tensors = stored_tensors(planned.params, quantized, recipe.quantize_base, recipe.double_quant)
    buffers = {n: (tuple(b.shape), b.dtype) for n, b in meta.named_buffers()}
    return {**{t.name: (tuple(t.shape), getattr(torch, t.dtype)) for t in tensors}, **buffers}


def _load(tmp_path, module_cls, config, bnb_config):
    torch.manual_seed(0)
    module_cls(config).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module_cls.from_pretrained(tmp_path, quantization_config=bnb_config, device_map="cpu",
                                          dtype=torch.bfloat16)


def _nbytes(tensors) -> int:
    return sum(torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
               for shape, dt in tensors.values())


#: every model below is loaded with dtype=torch.bfloat16, i.e. --dtype bf16
BF16 = "bfloat16"
CASES = {
    "nf4": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"), Recipe(BF16, quantize_base="nf4")),
    "nf4-double-quant": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True),
                         Recipe(BF16, quantize_base="nf4", double_quant=True)),
    "fp4": (dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"), Recipe(BF16, quantize_base="fp4")),
    "int8": (dict(load_in_8bit=True), Recipe(BF16, quantize_base="int8")),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_tensor_matches_bitsandbytes(tmp_path, case, arch):
    cls, config = (LlamaForCausalLM, LLAMA) if arch == "llama" else (GPT2LMHeadModel, GPT2)
    kwargs, recipe = CASES[case]
    real = _real_tensors(_load(tmp_path, cls, config, BitsAndBytesConfig(**kwargs)))
    planned = _planned(cls, config, recipe)
    assert planned == real
    assert _nbytes(planned) == _nbytes(real)


def test_which_layers_stay_unquantized(tmp_path):
    """Embeddings, norms and the LM head stay bf16; every projection is 4-bit (as loaded)."""
    model = _load(tmp_path, LlamaForCausalLM, LLAMA, BitsAndBytesConfig(load_in_4bit=True))
    kept = sorted(n for n, p in model.named_parameters() if not isinstance(p, bnb.nn.Params4bit))
    assert kept == ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                    "model.layers.0.post_attention_layernorm.weight",
                    "model.layers.1.input_layernorm.weight",
                    "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"]
    planned = _planned(LlamaForCausalLM, LLAMA, Recipe(BF16, quantize_base="nf4"))
    assert {n for n, (_, dt) in planned.items() if dt == torch.bfloat16} == set(kept)


def test_hand_counted_nf4_bytes():
    """One 4096x11008 projection (Llama-2-7B's down_proj), counted by hand from the format."""
    from smmf_plan.quantize import quantized_tensors
    from smmf_plan.shapes import ParamSpec

    n = 4096 * 11008
    p = ParamSpec("down_proj.weight", (4096, 11008), "bfloat16", False)
    assert sum(t.nbytes for t in quantized_tensors(p, "nf4")) == n // 2 + (n // 64) * 4 + 16 * 4
    dq = sum(t.nbytes for t in quantized_tensors(p, "nf4", double_quant=True))
    assert dq == n // 2 + n // 64 + 16 * 4 + 4 + -(-(n // 64) // 256) * 4 + 256 * 4
    assert sum(t.nbytes for t in quantized_tensors(p, "int8")) == n + 4096 * 4


def test_lora_over_nf4_base_quantizes_only_frozen_linears():
    with torch.device("meta"):
        meta = LlamaForCausalLM(LLAMA)
    spec = spec_of_module(meta)
    params = apply_lora(spec.params, 4, ["q_proj", "v_proj"])
    names = quantized_weights(meta, params, "nf4")
    assert len(names) == 2 * 7 and "lm_head.weight" not in names
    assert not any("lora_" in n for n in names)


def test_a_model_without_linear_layers_is_refused():
    from torch import nn

    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    spec = spec_of_module(conv)
    with pytest.raises(PlanError, match="no Linear layer"):
        quantized_weights(conv, spec.params, "nf4")


def test_a_trainable_linear_cannot_be_quantized():
    with torch.device("meta"):
        meta = LlamaForCausalLM(LLAMA)
    spec = spec_of_module(meta)  # every parameter trainable
    with pytest.raises(PlanError, match="cannot train"):
        quantized_weights(meta, spec.params, "int8")


def test_packed_storage_is_bitsandbytes_own():
    """The codes' shape and dtype in a floating storage (bnb_4bit_quant_storage, what FSDP and
    ZeRO-3 shard), as bitsandbytes' quantize_4bit makes them."""
    F = bnb.functional

    for shape in ((64, 32), (128, 48)):
        for storage in ("bfloat16", "float16", "float32", "uint8"):
            packed, _ = F.quantize_4bit(torch.zeros(shape, dtype=torch.bfloat16), quant_type="nf4",
                                        quant_storage=getattr(torch, storage))
            mine = quantized_tensors(ParamSpec("w", shape, "bfloat16", False), "nf4",
                                     quant_storage=storage)[0]
            assert (tuple(packed.shape), str(packed.dtype)) == (mine.shape, f"torch.{storage}")
