"""What an optimizer keeps per parameter: a list of state tensors (name, shape, dtype, place).

Layouts are pure arithmetic over a :class:`~smmf_plan.shapes.ParamSpec`; they never import torch.
Each optimizer family lives in its own module and registers itself in
:mod:`smmf_plan.layouts.registry`. ``build`` (which does import torch and the implementation)
creates the real optimizer the layout describes, so tests and the probe can check one against the
other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

from .. import allocators, dtypes
from ..shapes import ParamSpec, Shape

@dataclass(frozen=True)
class StateTensor:
    """One tensor in ``optimizer.state[p]``."""

    name: str
    shape: Shape
    dtype: str
    #: True where the implementation keeps the tensor in host memory whatever the parameter's
    #: device is (torch Adam's ``step`` without ``fused``/``capturable``).
    on_host: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.ITEMSIZE[self.dtype]

    def allocated(self, allocator: str) -> int:
        """Bytes this tensor costs under ``allocator`` ("cuda" or "cpu"): the CUDA figure counts
        device-resident tensors only, each rounded up to 512 B (as ``torch.cuda.memory_allocated``
        reports); the CPU figure counts every tensor, 64-B aligned."""
        if allocator == "cuda" and self.on_host:
            return 0
        return allocators.get(allocator).round(self.nbytes)


#: the allocators a plan reports allocated bytes for, in the tables' column order.
ALLOCATORS = ("cuda", "cpu")


class OptimizerLayout:
    """Base class: a configured optimizer variant that can say what state each parameter gets."""

    #: registry name (``adam``, ``smmf`` ...).
    name: ClassVar[str]
    #: one line shown by ``smmf-plan optimizers``.
    summary: ClassVar[str]
    #: the implementation the layout reproduces, e.g. ``torch.optim.Adam``.
    implementation: ClassVar[str]
    #: pip distribution that provides the implementation (``None``: torch or this package).
    requires: ClassVar[str | None] = None
    #: option name → (default, parser); the variant grammar ``NAME:key=value`` sets these.
    options: ClassVar[Mapping[str, tuple[Any, Any]]] = {}

    def __init__(self, id: str, **opts: Any) -> None:
        self.id = id
        self.opts = {k: default for k, (default, _) in self.options.items()}
        self.opts.update(opts)

    def state(self, spec: ParamSpec) -> list[StateTensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_bytes(self, spec: ParamSpec) -> int:
        return sum(t.nbytes for t in self.state(spec))

    def allocated_bytes(self, spec: ParamSpec, allocator: str) -> int:
        return sum(t.allocated(allocator) for t in self.state(spec))

    def build(self, params: Iterable, **hyper: Any):  # pragma: no cover - abstract
        """The real optimizer over ``params`` (imports torch and the implementation)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<layout {self.id}>"


def parse_optional_float(text: str) -> float | None:
    t = text.strip().lower()
    if t in ("none", "null", "off"):
        return None
    return float(t)


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def param_dtype(spec: ParamSpec) -> str:
    return dtypes.canonical(spec.dtype)
