"""A built (meta) module made into the one a recipe trains: each parameter in its planned dtype and
trainability, bitsandbytes' quantized layers stood in for, LoRA adapters attached.

The stand-in for a quantized layer (:class:`QuantizedLinear`) allocates what bitsandbytes'
``Linear4bit`` / ``Linear8bitLt`` allocate while training a frozen layer, and nothing else:
the input cast to the compute dtype, the weight dequantized to the compute dtype for the matmul
(a transient, in forward and again in backward for the input's gradient), the output cast back.
Like ``MatMul4Bit`` it saves no activation for backward (the weight is frozen, so the input is not
needed); its quantized weight is a buffer, which the trace does not count (the breakdown's weights
part does, exactly).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from ..allocators import round_up
from ..shapes import ParamSpec
from ..sources.lora import attach_lora


def set_dtypes(module: Any, specs: Sequence[ParamSpec]) -> None:
    """Give every parameter of ``module`` the dtype its planned spec has (by name or alias; tied
    parameters stay tied) and freeze the ones the spec marks frozen."""
    import torch

    planned: dict[str, ParamSpec] = {}
    for s in specs:
        for n in (s.name, *s.aliases):
            planned[n] = s
    memo: dict[int, Any] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for leaf, p in list(mod._parameters.items()):
            if p is None:
                continue
            s = planned.get(f"{mod_name}.{leaf}" if mod_name else leaf)
            if id(p) not in memo:
                new = p
                if s is not None and p.is_floating_point() and str(p.dtype).removeprefix("torch.") != s.dtype:
                    new = torch.nn.Parameter(p.detach().to(getattr(torch, s.dtype)),
                                             requires_grad=p.requires_grad)
                if s is not None and not s.trainable:
                    new.requires_grad_(False)
                memo[id(p)] = new
            mod._parameters[leaf] = memo[id(p)]


def quantize_linears(module: Any, layers: Mapping[str, tuple[int, int]], compute_dtype: str) -> None:
    """Replace each layer named in ``layers`` (``<module>.weight`` → (out, in)) by a
    :class:`QuantizedLinear` computing in ``compute_dtype``."""
    import torch

    for weight_name in layers:
        path = weight_name[: -len(".weight")]
        parent_path, _, leaf = path.rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        base = getattr(parent, leaf)
        setattr(parent, leaf, quantized_linear_class().replacing(base, layers[weight_name],
                                                                 getattr(torch, compute_dtype)))


@functools.lru_cache(maxsize=None)
def quantized_linear_class():
    """The ``QuantizedLinear`` module class (defined on first use: this package imports no torch
    at import time)."""
    import torch
    from torch import nn

    class _MatMulQuantized(torch.autograd.Function):
        """``x @ dequant(W).T + b``, dequantizing in forward and again in backward, saving nothing."""

        @staticmethod
        def forward(ctx, x, out_features, bias):
            ctx.out_in = (out_features, x.shape[-1])
            w = torch.empty(ctx.out_in, dtype=x.dtype, device=x.device)  # dequantized, transient
            return torch.nn.functional.linear(x, w, bias)

        @staticmethod
        def backward(ctx, grad):
            w = torch.empty(ctx.out_in, dtype=grad.dtype, device=grad.device)
            return grad @ w, None, None

    class QuantizedLinear(nn.Module):
        """Stands for a frozen bitsandbytes layer in a traced step (see the module docstring)."""

        def __init__(self, out_features: int, in_features: int, bias, compute_dtype, device) -> None:
            super().__init__()
            self.out_features, self.in_features, self.compute_dtype = out_features, in_features, compute_dtype
            # the packed weight's place (not counted by the trace; the weights part counts it)
            self.register_buffer("weight", torch.empty((1,), dtype=torch.uint8, device=device))
            self.bias = bias

        @classmethod
        def replacing(cls, base, out_in: tuple[int, int], compute_dtype):
            bias = getattr(base, "bias", None)
            if bias is not None:
                bias.requires_grad_(False)
            device = next(iter(base.parameters())).device
            return cls(out_in[0], out_in[1], bias, compute_dtype, device)

        def forward(self, x):
            dtype = x.dtype
            x = x.to(self.compute_dtype)
            bias = None if self.bias is None else self.bias.to(self.compute_dtype)
            return _MatMulQuantized.apply(x, self.out_features, bias).to(dtype)

    return QuantizedLinear


def prepare(module: Any, specs: Sequence[ParamSpec], *, quantized: Mapping[str, tuple[int, int]] | None = None,
            compute_dtype: str = "float32", buffers_dtype: str | None = None):
    """``module`` as the recipe trains it: dtypes and trainability from ``specs``, the
    ``quantized`` layers stood in for, LoRA adapters attached (when ``specs`` has them), floating
    buffers in ``buffers_dtype`` when given. Returns the module."""
    import torch

    set_dtypes(module, specs)
    if buffers_dtype is not None:
        for mod in module.modules():
            for leaf, b in list(mod._buffers.items()):
                if b is not None and b.is_floating_point():
                    mod._buffers[leaf] = b.to(getattr(torch, buffers_dtype))
    if quantized:
        quantize_linears(module, quantized, compute_dtype)
    if any(s.name.endswith(".lora_A.weight") for s in specs):
        module = attach_lora(module, specs)
    return module


def buffer_bytes(module: Any, quantum: int) -> int:
    """Bytes of the module's buffers, each rounded up to ``quantum`` (a quantized stand-in's
    placeholder is not one: the weights part counts the quantized weight)."""
    cls = quantized_linear_class()
    total, seen = 0, set()
    for mod in module.modules():
        for leaf, b in mod._buffers.items():
            if b is None or id(b) in seen or (isinstance(mod, cls) and leaf == "weight"):
                continue
            seen.add(id(b))
            total += round_up(b.numel() * b.element_size(), quantum)
    return total
