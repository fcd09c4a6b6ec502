"""A quantized frozen base as bitsandbytes stores it: the exact tensors, and which layers it converts.

The storage (bitsandbytes 0.4x-0.50, ``Linear4bit`` / ``Linear8bitLt``; ``bitsandbytes.functional``
``quantize_4bit`` / ``quantize_blockwise`` and ``Int8Params``), for a weight of ``n`` elements and
``out`` rows, each tensor allocated separately (so each is rounded by the allocator):

* **nf4 / fp4** (``Params4bit``, ``blocksize`` 64, ``quant_storage`` uint8): the codes packed two per
  byte, uint8 ``((n + 1) // 2, 1)``; ``absmax`` float32 ``(ceil(n / 64),)``; the 16-entry code book
  ``code`` float32 ``(16,)`` (one per layer). With double quantization
  (``bnb_4bit_use_double_quant``, ``compress_statistics``) ``absmax`` is uint8 instead, plus its
  ``offset`` (float32 scalar) and a nested state: ``absmax`` float32 ``(ceil(blocks / 256),)`` and
  the 256-entry dynamic code book float32 ``(256,)`` (copied per layer).
* **int8** (``Int8Params``, LLM.int8()): int8 ``(out, in)`` and the per-row scale ``SCB`` float32
  ``(out,)``.

The bias of a converted layer stays a parameter in the frozen dtype. Which layers are converted is
decided as transformers' integration decides (``replace_with_bnb_linear``): every ``nn.Linear`` or
GPT-2 ``Conv1D`` except the modules ``get_keys_to_not_convert`` keeps (tied weights, the output
embeddings, the last module) and the model's ``_keep_in_fp32_modules``; embeddings and norms are not
Linear and stay as they are. For modules that are not transformers models (timm), the same rule
without the transformers-specific parts: every ``nn.Linear`` except the last module (the head).

Torch-free but :func:`converted_linears`, which walks a built (meta) module.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from . import dtypes
from .errors import PlanError
from .shapes import ParamSpec

#: ``Params4bit``'s default block size (transformers' integration does not change it).
BLOCKSIZE_4BIT = 64
#: block size of the nested (double) quantization of the absmax.
BLOCKSIZE_NESTED = 256
#: entries of the 4-bit code book (nf4 / fp4), float32.
CODE_4BIT = 16
#: entries of the 8-bit dynamic code book of the nested state, float32.
CODE_DYNAMIC = 256


def _blocks(n: int, size: int) -> int:
    return -(-n // size)


def quantized_tensors(param: ParamSpec, quant: str, double_quant: bool = False,
                      out_in: tuple[int, int] | None = None, quant_storage: str = "uint8"
                      ) -> list[ParamSpec]:
    """The tensors bitsandbytes stores for the weight ``param`` quantized as ``quant`` (see the
    module docstring), named after it, frozen. ``out_in``: the layer's (out, in) features, for a
    weight stored transposed (GPT-2's ``Conv1D`` keeps (in, out); bitsandbytes stores (out, in));
    default ``param.shape``. ``quant_storage``: the dtype the packed 4-bit codes are stored as
    (``bnb_4bit_quant_storage``; a floating one lets FSDP and ZeRO-3 shard them):
    ``quantize_4bit`` allocates ``((n + 1) // (2 · itemsize), 1)`` elements of it."""
    n, name = param.numel, param.name
    if quant == "int8":
        if len(param.shape) != 2:
            raise ValueError(f"int8 quantizes 2-D weights, {name} is {list(param.shape)}")
        out, fan_in = out_in or param.shape
        return [ParamSpec(name, (out, fan_in), "int8", False),
                ParamSpec(f"{name}.SCB", (out,), "float32", False)]
    if quant not in ("nf4", "fp4"):
        raise ValueError(f"unknown quantization {quant!r}")
    blocks = _blocks(n, BLOCKSIZE_4BIT)
    rows = (n + 1) // (2 * dtypes.itemsize(quant_storage))
    tensors = [ParamSpec(name, (rows, 1), quant_storage, False),
               ParamSpec(f"{name}.absmax", (blocks,), "uint8" if double_quant else "float32", False),
               ParamSpec(f"{name}.quant_map", (CODE_4BIT,), "float32", False)]
    if double_quant:
        tensors += [ParamSpec(f"{name}.offset", (), "float32", False),
                    ParamSpec(f"{name}.nested_absmax", (_blocks(blocks, BLOCKSIZE_NESTED),), "float32", False),
                    ParamSpec(f"{name}.nested_quant_map", (CODE_DYNAMIC,), "float32", False)]
    return tensors


def stored_tensors(params: Iterable[ParamSpec], quantized: Mapping[str, tuple[int, int]],
                   quant: str | None, double_quant: bool = False, quant_storage: str = "uint8"
                   ) -> list[ParamSpec]:
    """Every tensor the weights take: ``params`` as they are, except those named in ``quantized``
    (weight name → the layer's (out, in) features, :func:`quantized_weights`), which become their
    quantized tensors (the packed weight keeps the parameter's name, the quantization state's
    tensors are named ``<weight>.<part>``)."""
    out: list[ParamSpec] = []
    for p in params:
        if quant is not None and p.name in quantized:
            out += quantized_tensors(p, quant, double_quant, quantized[p.name], quant_storage)
        else:
            out.append(p)
    return out


# --------------------------------------------------------------------------- which layers

def converted_linears(module: Any) -> dict[str, tuple[int, int]]:
    """The modules bitsandbytes would convert in ``module`` (see the module docstring), in module
    order: name → (out_features, in_features)."""
    from torch import nn

    try:  # transformers' own decision, where the module is one of its models
        from transformers import PreTrainedModel
        from transformers.pytorch_utils import Conv1D
        from transformers.quantizers.base import HfQuantizer
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = Conv1D = None  # type: ignore[assignment,misc]
    if PreTrainedModel is not None and isinstance(module, PreTrainedModel):
        skip = HfQuantizer.get_modules_to_not_convert(module, None, module._keep_in_fp32_modules)
        out = {}
        for name, m in module.named_modules():
            if type(m) is nn.Linear and should_convert_module(name, skip):
                out[name] = (m.out_features, m.in_features)
            elif isinstance(m, Conv1D) and should_convert_module(name, skip):
                fan_in, fan_out = m.weight.shape
                out[name] = (fan_out, fan_in)
        return out
    linears = {name: (m.out_features, m.in_features) for name, m in module.named_modules()
               if type(m) is nn.Linear}
    params = list(module.named_parameters())
    if params and linears:
        linears.pop(params[-1][0].rsplit(".", 1)[0], None)
    return linears


def quantized_weights(module: Any, params: Iterable[ParamSpec], quant: str) -> dict[str, tuple[int, int]]:
    """The planned parameter names (``<module>.weight``) bitsandbytes quantizes in ``module``, each
    with its layer's (out, in) features.
    :class:`PlanError` when there is nothing to quantize, or a converted weight is trainable
    (bitsandbytes' weights cannot train)."""
    by_name = {}
    for p in params:
        for n in (p.name, *p.aliases):
            by_name[n] = p
    layers = {f"{m}.weight": out_in for m, out_in in converted_linears(module).items()}
    found = [by_name[n] for n in layers if n in by_name]
    if not found:
        raise PlanError(f"--quantize-base {quant}: {type(module).__name__} has no Linear layer that "
                        "bitsandbytes would quantize (it converts nn.Linear layers but the output "
                        "head); drop --quantize-base")
    trained = [p.name for p in found if p.trainable]
    if trained:
        raise PlanError(f"--quantize-base {quant} stores {trained[0]} quantized, which cannot train"
                        + (f" (and {len(trained) - 1} more)" if len(trained) > 1 else "")
                        + ": freeze those layers (--freeze) or train adapters (--lora-rank)")
    return {p.name: layers[n] for n in layers if n in by_name for p in [by_name[n]]}
