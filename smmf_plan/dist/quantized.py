"""A quantized frozen base (``--quantize-base``) as each scheme's engine holds it (torch-free).

bitsandbytes keeps a 4-bit weight as a ``Params4bit`` parameter (the packed codes) with its
quantization state (absmax, code books; :mod:`smmf_plan.quantize`) as plain tensors beside it, and
an LLM.int8() weight as an ``Int8Params`` parameter with its per-row scale. What a rank holds:

* ``ddp``, ``zero1``, ``zero2``: frozen parameters are neither bucketed nor flattened: every rank
  holds the base exactly as one process does (bitsandbytes' default uint8 storage).
* ``fsdp2``, ``zero3``: the packed weight is a parameter like any other, so it is sharded (FSDP2:
  dim-0 chunks of its ``(rows, 1)`` storage; ZeRO-3: ``⌈numel/N⌉`` elements). That needs a
  floating storage dtype — ``fully_shard`` makes every shard an ``nn.Parameter``, which a uint8
  tensor cannot be ("only Tensors of floating point dtype can require gradients") — so the
  FSDP-QLoRA and ZeRO-3-QLoRA recipes (bitsandbytes' and PEFT's docs) set
  ``bnb_4bit_quant_storage``: planned as the dtype the engine gathers parameters in (the
  ``MixedPrecisionPolicy``'s ``param_dtype`` / DeepSpeed's bf16/fp16 model dtype under ``--amp``,
  else the base's own), so that no cast touches the packed codes. The quantization state is not a
  parameter: every rank keeps it whole. LLM.int8() weights have no floating storage: refused.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .. import dtypes
from ..errors import PlanError
from ..quantize import quantized_tensors
from ..recipe import Recipe
from ..shapes import ParamSpec

#: schemes that shard (or partition) frozen parameters too.
SHARDING = ("fsdp2", "zero3")


def check(scheme: str, recipe: Recipe) -> None:
    """One-line :class:`PlanError` where ``scheme`` cannot hold ``recipe``'s quantized base."""
    if recipe.quantize_base == "int8" and scheme in SHARDING:
        engine = "fully_shard" if scheme == "fsdp2" else "DeepSpeed ZeRO-3"
        raise PlanError(f"--dist {scheme} with --quantize-base int8: {engine} shards every parameter, "
                        "and bitsandbytes' LLM.int8() weights are int8 with no floating storage to "
                        "shard (only 4-bit weights have bnb_4bit_quant_storage): use --quantize-base "
                        "nf4 or fp4, or --dist ddp, zero1 or zero2")


def storage_dtype(spec: ParamSpec, scheme: str, amp: str | None) -> str:
    """The packed 4-bit codes' dtype under ``scheme`` (see the module docstring)."""
    if scheme not in SHARDING:
        return "uint8"
    return amp or dtypes.canonical(spec.dtype)


def engine_tensors(specs: Sequence[ParamSpec], quantized: Mapping[str, tuple[int, int]],
                   recipe: Recipe, scheme: str, amp: str | None
                   ) -> tuple[list[ParamSpec], list[ParamSpec]]:
    """The parameters ``scheme`` places (each quantized weight replaced by its packed storage,
    same name) and the quantization state every rank keeps whole."""
    if recipe.quantize_base is None or not quantized:
        return list(specs), []
    check(scheme, recipe)
    params: list[ParamSpec] = []
    state: list[ParamSpec] = []
    for s in specs:
        if s.name not in quantized:
            params.append(s)
            continue
        storage = "uint8" if recipe.quantize_base == "int8" else storage_dtype(s, scheme, amp)
        packed, *rest = quantized_tensors(s, recipe.quantize_base, recipe.double_quant,
                                          quantized[s.name], storage)
        params.append(packed)
        state += rest
    return params, state


def assumption(scheme: str, recipe: Recipe, amp: str | None, base_dtype: str | None) -> str:
    q = recipe.quantize_base
    if scheme not in SHARDING:
        return (f"{q} base under {scheme}: frozen parameters are not bucketed or flattened, every "
                "rank holds the quantized base as one process does (bitsandbytes' uint8 storage)")
    engine = "fully_shard" if scheme == "fsdp2" else "ZeRO-3"
    storage = amp or base_dtype or "the base's dtype"
    return (f"{q} base under {scheme}: bnb_4bit_quant_storage={storage} (the FSDP/ZeRO-3 QLoRA "
            f"recipe: a floating storage {engine} can shard, equal to the dtype parameters are "
            "gathered in so the packed codes are never cast), the packed weights sharded like "
            "every parameter; the quantization state (absmax, code books) is not a parameter and "
            "stays whole on every rank"
            + ("; fully_shard turns Params4bit into plain parameters: the layers need their "
               "quant_state restored after each all-gather (as axolotl and accelerate patch it)"
               if scheme == "fsdp2" else ""))
