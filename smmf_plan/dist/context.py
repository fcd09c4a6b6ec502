"""What every scheme's per-rank planner is given: the model's parameters as the engine sees them,
the precision, the recipe (accumulation, offload) and the allocator (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import allocators, dtypes
from ..recipe import Recipe
from ..shapes import ParamSpec


@dataclass(frozen=True)
class Context:
    """One model, planned in one precision for one allocator."""

    #: every parameter (frozen ones too), in the planned dtype: fp32 master weights under AMP; a
    #: quantized base's packed weights in place of its weights (:mod:`.quantized`).
    specs: tuple[ParamSpec, ...]
    #: "cpu", "cuda" or "raw": how each tensor is rounded.
    allocator: str = "raw"
    #: buffers (BatchNorm statistics, …) and a quantized base's quantization state, as
    #: allocated: every scheme keeps them whole on every rank.
    buffer_bytes: int = 0
    #: the mixed-precision compute dtype (``--amp``), or None.
    amp: str | None = None
    #: the recipe's accumulation and offload (its precision is already in ``specs``).
    recipe: Recipe = Recipe()
    #: the model library (the host runtime of an offloading rank).
    library: str | None = None

    @property
    def quantum(self) -> int:
        return allocators.get(self.allocator).quantum

    def round(self, nbytes: int) -> int:
        return allocators.round_up(nbytes, self.quantum)

    @property
    def trainable(self) -> list[ParamSpec]:
        return [s for s in self.specs if s.trainable]

    def compute_dtype(self, spec: ParamSpec) -> str:
        """The dtype forward and backward run in: the AMP dtype for floating parameters."""
        dt = spec.dtype if spec.dtype in dtypes.ITEMSIZE else dtypes.canonical(spec.dtype)
        return self.amp if self.amp and dt in dtypes.FLOATING else dt


def nbytes(numel: int, dtype: str) -> int:
    size = dtypes.ITEMSIZE.get(dtype)
    return numel * (size if size is not None else dtypes.itemsize(dtype))
