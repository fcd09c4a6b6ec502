"""The allocation sequence of training steps: the blocks a step asks for, in order, which an
allocator model replays (:mod:`.caching`, :mod:`.glibc`).

A sequence is a list of integers: ``n >= 0`` allocates a block of ``n`` bytes (its id is its
position among the allocations, counting from 0), ``~i`` (a negative number) frees block ``i``.

One traced forward + backward gives a :class:`StepLog` (the trace's storage tracker records it);
:func:`training_sequence` wraps it into what a training process does: the weights allocated once,
then ``steps`` steps of ``zero_grad(set_to_none=True)`` (last step's gradients freed), the traced
forward + backward, the optimizer step (its state created in the first step, its temporaries
allocated and freed in every step) and the outputs and loss dropped. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

#: steps a sequence runs: the first creates the optimizer state, the last is the one measured
#: (as :mod:`smmf_plan.peak` measures it), the one between settles what the first left behind.
STEPS = 3


@dataclass(frozen=True)
class StepLog:
    """The allocations and frees of one traced forward + backward, in order (see the module
    docstring for the encoding); ``grads`` and ``retained`` are the ids still alive when backward
    returns: the parameter gradients (freed by the next ``zero_grad``) and what the caller still
    holds (outputs, target, input), dropped after the optimizer step."""

    events: tuple[int, ...]
    grads: tuple[int, ...] = ()
    retained: tuple[int, ...] = ()
    #: position in ``events`` where forward ended and backward began.
    forward_end: int = 0

    def to_json(self) -> list:
        return [list(self.events), list(self.grads), list(self.retained), self.forward_end]

    @classmethod
    def from_json(cls, data: Sequence) -> "StepLog":
        events, grads, retained, forward_end = data
        return cls(tuple(events), tuple(grads), tuple(retained), int(forward_end))


@dataclass(frozen=True)
class OptimizerStep:
    """What one optimizer's step allocates, per trainable parameter in order: ``state[i]`` the
    byte sizes of the state tensors it creates in the first step (on the device), ``temps[i]``
    the sizes of the temporaries one step allocates for it. ``path`` is the code path:
    ``"for-loop"`` (one parameter's temporaries at a time), ``"foreach"`` (every parameter's
    temporaries alive at once), ``"fused"`` (none); ``keeps_scratch``: the temporaries are
    allocated in the first step and kept (SMMF's scratch)."""

    state: tuple[tuple[int, ...], ...]
    temps: tuple[tuple[int, ...], ...] = ()
    path: str = "for-loop"
    keeps_scratch: bool = False


@dataclass
class Blocks:
    """A replayable sequence and where its last step begins (an allocator's peak is read from
    there on, as the measurement resets its peak just before the last step)."""

    events: list[int] = field(default_factory=list)
    last_step_at: int = 0
    _next: int = 0

    def alloc(self, n: int) -> int:
        self.events.append(int(n))
        i = self._next
        self._next += 1
        return i

    def free(self, i: int) -> None:
        self.events.append(~i)

    def free_all(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.free(i)


def training_sequence(weights: Sequence[int], log: StepLog, step: OptimizerStep, *,
                      steps: int = STEPS) -> Blocks:
    """The blocks of ``steps`` training steps (see the module docstring): ``weights`` are the
    byte sizes of the parameters and buffers, allocated before the first step in this order."""
    seq = Blocks()
    for n in weights:
        if n:
            seq.alloc(n)
    grads: list[int] = []
    scratch: list[int] = []
    for s in range(steps):
        seq.free_all(grads)
        if s == steps - 1:
            seq.last_step_at = len(seq.events)
        ids: dict[int, int] = {}
        n_traced = 0
        for e in log.events:
            if e >= 0:
                ids[n_traced] = seq.alloc(e)
                n_traced += 1
            else:
                seq.free(ids.pop(~e))
        if s == 0:
            for sizes in step.state:
                for n in sizes:
                    if n:
                        seq.alloc(n)
        if step.path != "fused" and step.temps:
            if step.keeps_scratch:
                if s == 0:
                    scratch = [seq.alloc(n) for sizes in step.temps for n in sizes if n]
            elif step.path == "foreach":
                seq.free_all([seq.alloc(n) for sizes in step.temps for n in sizes if n])
            else:
                for sizes in step.temps:
                    seq.free_all([seq.alloc(n) for n in sizes if n])
        seq.free_all(ids.pop(i) for i in log.retained if i in ids)
        grads = [ids.pop(i) for i in log.grads if i in ids]
        seq.free_all(list(ids.values()))  # anything else the trace left alive
    del scratch
    return seq
