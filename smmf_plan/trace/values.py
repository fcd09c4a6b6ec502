"""Values of the small integer and boolean tensors of a traced step, so that a model's checks of
its batch (is a position padded, are sequences packed, is a pad token present) get the answer a
real step would get, although the trace runs on tensors without data.

The synthetic batch's token ids, labels and positions are known (:meth:`InputSpec.values`); every
operator whose tensor inputs all have known values and whose outputs have at most :data:`LIMIT`
elements is also run on the CPU on those values (``arange``, ``ones`` and the other factories
too), so position ids, padding masks (built in any dtype) and their reductions carry values
through the step. ``.item()`` on such a tensor returns its value. Weights have no values, so
nothing computed from them (activations, logits) has one; an operator that reads such a tensor
gives an output without value, as does an in-place write from one. Where a value is still needed, :class:`~smmf_plan.trace.StorageTracker`
falls back to answering ``all``/``any`` reductions as for a clean batch, and otherwise the trace
fails with a reason.
"""

from __future__ import annotations

import weakref
from typing import Any

#: the largest integer/boolean tensor (in elements) whose values are computed.
LIMIT = 1 << 22


class KnownValues:
    """CPU values of meta/fake tensors, keyed by the tensor object (dropped when it dies)."""

    def __init__(self) -> None:
        self._values: dict[int, Any] = {}
        self.computed = 0

    def know(self, tensor, value) -> None:
        key = id(tensor)
        if key not in self._values:
            weakref.finalize(tensor, self._values.pop, key, None)
        self._values[key] = value

    def get(self, tensor):
        return self._values.get(id(tensor))

    def forget(self, tensor) -> None:
        self._values.pop(id(tensor), None)

    def propagate(self, func, args, kwargs, out, outputs) -> None:
        """After ``func(*args, **kwargs)`` returned ``out`` (its tensors ``outputs``), compute the
        values of its integer/boolean outputs from its inputs' values, where all are known."""
        import torch
        from torch.utils._python_dispatch import _disable_current_modes
        from torch.utils._pytree import tree_flatten, tree_map

        if not outputs:
            return
        small = all(o.numel() <= LIMIT for o in outputs)
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if not small or any(_no_data(a) and self.get(a) is None for a in inputs):
            for o in outputs:  # unknown, or a stale value after an in-place write
                self.forget(o)
            return

        def cpu(a):
            if isinstance(a, torch.Tensor) and _no_data(a):
                return self.get(a)
            if isinstance(a, torch.device) and a.type == "meta":
                return torch.device("cpu")
            return a

        cpu_kwargs = {k: cpu(v) for k, v in kwargs.items()}
        try:
            with _disable_current_modes():
                res = func(*tree_map(cpu, args), **cpu_kwargs)
        except Exception:  # noqa: BLE001 - no value then; the trace itself goes on
            for o in outputs:
                self.forget(o)
            return
        got = [r for r in (res if isinstance(res, (tuple, list)) else (res,)) if isinstance(r, torch.Tensor)]
        if len(got) != len(outputs):
            for o in outputs:
                self.forget(o)
            return
        self.computed += 1
        for o, r in zip(outputs, got):
            self.know(o, r)


def _no_data(t) -> bool:
    """A meta or fake tensor (one that has no values to read)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or t.device.type == "meta"
