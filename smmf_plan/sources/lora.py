"""LoRA planning: adapters added to target linear layers, base weights frozen.

Assumptions (stated because they decide the byte counts):
- every base parameter is frozen; only adapters train;
- a target is a 2-D ``<module>.weight`` whose module name's last component matches a target
  (exact name or an fnmatch glob; a target containing ``.`` may also match the full module name);
- ``nn.Linear`` weights are laid out ``(out, in)``; GPT-2-style ``Conv1D`` (``c_attn``, ``c_proj``,
  ``c_fc``, ``q_attn``) store ``(in, out)``, so their in/out are read transposed;
- adapters are ``<module>.lora_A.weight`` of shape ``(rank, in)`` and ``<module>.lora_B.weight`` of
  shape ``(out, rank)`` (PEFT's naming), in the base weight's dtype here; the recipe
  (:mod:`smmf_plan.recipe`) decides the dtype they train in (PEFT's ``autocast_adapter_dtype``
  keeps half-precision adapters in float32), trainable.
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Sequence

from ..errors import PlanError
from ..shapes import ParamSpec

#: GPT-2's Conv1D modules keep their weight as (in_features, out_features).
CONV1D_NAMES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})


def _module_of(name: str) -> str | None:
    return name[: -len(".weight")] if name.endswith(".weight") else None


def _matches(module: str, target: str) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return fnmatchcase(leaf, target) or ("." in target and fnmatchcase(module, target))


def linear_modules(params: Sequence[ParamSpec]) -> list[str]:
    """Distinct last components of modules that own a 2-D weight (LoRA target candidates)."""
    seen: dict[str, None] = {}
    for p in params:
        m = _module_of(p.name)
        if m is not None and len(p.shape) == 2:
            seen.setdefault(m.rsplit(".", 1)[-1], None)
    return list(seen)


def apply_lora(params: list[ParamSpec], rank: int, targets: Sequence[str]) -> list[ParamSpec]:
    """Freeze ``params`` and add rank-``rank`` adapters to every target (see module docstring).
    A target that matches nothing raises :class:`PlanError` listing the candidates."""
    if rank < 1:
        raise PlanError(f"--lora-rank must be a positive integer, got {rank}")
    targets = [t.strip() for t in targets if t.strip()]
    if not targets:
        raise PlanError("LoRA needs target modules: pass e.g. --lora-targets q_proj,v_proj")
    hit = {t: 0 for t in targets}
    out: list[ParamSpec] = []
    for p in params:
        out.append(replace(p, trainable=False))
        m = _module_of(p.name)
        if m is None or len(p.shape) != 2:
            continue
        matched = [t for t in targets if _matches(m, t)]
        if not matched:
            continue
        for t in matched:
            hit[t] += 1
        leaf = m.rsplit(".", 1)[-1]
        if leaf in CONV1D_NAMES:
            fan_in, fan_out = p.shape
        else:
            fan_out, fan_in = p.shape
        # PEFT's adapters are nn.Linear layers: low-rank optimizers treat them as such
        out.append(ParamSpec(f"{m}.lora_A.weight", (rank, fan_in), p.dtype, True, linear=True))
        out.append(ParamSpec(f"{m}.lora_B.weight", (fan_out, rank), p.dtype, True, linear=True))
    unknown = [t for t, n in hit.items() if n == 0]
    if unknown:
        avail = linear_modules(params)
        shown = ", ".join(avail[:30]) + (" …" if len(avail) > 30 else "")
        raise PlanError(f"--lora-targets {','.join(unknown)} matches no 2-D weight; "
                        f"linear modules in this model: {shown or 'none'}")
    return out


def attach_lora(module, params: Sequence[ParamSpec]):
    """Give a built module (meta or real) the adapters :func:`apply_lora` planned, so a traced or
    measured step runs them: each target becomes ``base(x) + B(A(x))`` with ``A: in→rank`` and
    ``B: rank→out`` (no bias, the planned dtype), registered as ``<module>.lora_A`` /
    ``<module>.lora_B`` so parameter names match the plan. Returns ``module``."""
    import torch
    from torch import nn

    class LoRAWrapped(nn.Module):
        """PEFT's ``lora.Linear`` forward (dropout 0): the input cast to the adapters' dtype,
        ``base(x) + B(A(x)) · scaling``, the result cast back to the base output's dtype."""

        def __init__(self, base: nn.Module, a: nn.Linear, b: nn.Linear) -> None:
            super().__init__()
            self.base, self.lora_A, self.lora_B = base, a, b
            self.scaling = 1.0  # lora_alpha / r: its value does not change a byte

        def forward(self, x):
            result = self.base(x)
            dtype = result.dtype
            x = x.to(self.lora_A.weight.dtype)  # PEFT's _cast_input_dtype (no copy when equal)
            result = result + self.lora_B(self.lora_A(x)) * self.scaling
            return result.to(dtype)

    adapters = {p.name[: -len(".lora_A.weight")]: p for p in params if p.name.endswith(".lora_A.weight")}
    ups = {p.name[: -len(".lora_B.weight")]: p for p in params if p.name.endswith(".lora_B.weight")}
    for path, a_spec in adapters.items():
        parent_path, _, leaf = path.rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        base = getattr(parent, leaf)
        device = next(iter([*base.parameters(), *base.buffers()])).device
        dtype = getattr(torch, a_spec.dtype)
        rank, fan_in = a_spec.shape
        fan_out = ups[path].shape[0]
        a = nn.Linear(fan_in, rank, bias=False, device=device, dtype=dtype)
        b = nn.Linear(rank, fan_out, bias=False, device=device, dtype=dtype)
        setattr(parent, leaf, LoRAWrapped(base, a, b))
    return module
