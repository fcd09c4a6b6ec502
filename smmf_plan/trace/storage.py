"""Live bytes of tensor storages during a traced step, per allocator rounding, with peaks."""

from __future__ import annotations

import contextlib
import weakref

from ..allocators import QUANTUM as ROUNDING
from ..allocators import round_up as _round
from . import opcache
from .attention import cpu_attention
from .values import KnownValues, _no_data


class StorageTracker:
    """Live bytes of tensor storages created while active, per allocator rounding, with peaks.

    A ``TorchDispatchMode`` sees each operator's outputs; a storage not seen before is an
    allocation, and a weakref finalizer on its Python object (which PyTorch keeps alive exactly as
    long as the storage) is its free. Storages registered with :meth:`ignore` (parameters,
    buffers, pre-existing state) are never counted. Works on meta, fake and real tensors.

    Tensors without data cannot answer a data-dependent question (``.item()``). A model's checks
    of its batch — is any position padded, are sequences packed — read small integer and boolean
    tensors derived from the batch: their values are carried through the step
    (:mod:`smmf_plan.trace.values`; :meth:`know` gives the batch's). Where no value is known, an
    ``all()`` / ``any()`` reduction is answered as for a clean batch: ``all`` true, ``any``
    false (:attr:`answered` counts them). Any other value read from a tensor without data fails
    the trace.

    With ``log=True`` every allocation and free is also recorded in order in :attr:`log`, in the
    encoding of :mod:`smmf_plan.allocators.sequence` (``n >= 0``: a block of ``n`` bytes, ``~i``:
    block ``i`` freed), for an allocator model to replay; :meth:`block_id` names a live storage's
    block. With ``reuse=True`` operators on meta tensors are answered from
    :mod:`smmf_plan.trace.opcache` where they can be (the same outputs' metadata, fresh storages)."""

    #: the reductions whose scalar result is answered, and the answer.
    ANSWERS = {"all": True, "any": False}

    def __init__(self, log: bool = False, reuse: bool = False) -> None:
        self.reuse = reuse
        self.live = {k: 0 for k in ROUNDING}
        self.peak = {k: 0 for k in ROUNDING}
        self._sizes: dict[int, int] = {}
        self._ignored: set[int] = set()
        self._answers: dict[int, bool] = {}
        self.values = KnownValues()
        self.ops = 0
        self.log: list[int] | None = [] if log else None
        self._ids: dict[int, int] = {}
        self._blocks = 0
        self.answered = 0

    def know(self, tensor, value) -> None:
        """``tensor`` (without data) holds ``value`` (a CPU tensor): the synthetic batch's ids."""
        self.values.know(tensor, value)

    def ignore(self, tensors) -> None:
        for t in tensors:
            if t is None:
                continue
            st = t.untyped_storage()
            if st._cdata not in self._ignored:
                self._ignored.add(st._cdata)
                # a freed storage's address can be reused by a new one: forget it when it dies
                weakref.finalize(st, self._ignored.discard, st._cdata)

    def add(self, t) -> None:
        """Count ``t``'s storage as live from now (e.g. the input batch)."""
        self._track(t)
        self._bump()

    def _track(self, t) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self._sizes or key in self._ignored:
            return
        n = st.nbytes()
        self._sizes[key] = n
        for k, q in ROUNDING.items():
            self.live[k] += _round(n, q)
        if self.log is not None:
            self._ids[key] = self._blocks
            self._blocks += 1
            self.log.append(n)
        weakref.finalize(st, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        if self._sizes.pop(key, None) is None:
            return
        for k, q in ROUNDING.items():
            self.live[k] -= _round(n, q)
        if self.log is not None:
            self.log.append(~self._ids.pop(key))

    def block_id(self, t) -> int | None:
        """The logged block of ``t``'s storage while it is live (None: not tracked or no log)."""
        return self._ids.get(t.untyped_storage()._cdata)

    def live_blocks(self) -> set[int]:
        """The logged blocks still live."""
        return set(self._ids.values())

    def _bump(self) -> None:
        for k in ROUNDING:
            if self.live[k] > self.peak[k]:
                self.peak[k] = self.live[k]

    def reset_peak(self) -> None:
        self.peak = dict(self.live)

    def mode(self):
        """A fresh dispatch mode feeding this tracker (enter it with ``with``); on meta tensors it
        also routes attention to the CPU kernel (see :mod:`smmf_plan.trace.attention`)."""
        from torch.utils._python_dispatch import TorchDispatchMode


        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return tracker._dispatch(func, args, kwargs or {})

        @contextlib.contextmanager
        def both():
            with _Mode(), cpu_attention():
                yield

        return both()

    def _dispatch(self, func, args, kwargs):
        import torch

        if func is torch.ops.aten._local_scalar_dense.default and _no_data(args[0]):
            value = self.values.get(args[0])
            if value is not None:
                return value.item()
            if id(args[0]) in self._answers:
                self.answered += 1
                return self._answers[id(args[0])]
        out = opcache.run(func, args, kwargs, torch) if self.reuse else func(*args, **kwargs)
        self.ops += 1
        outputs = _tensors(out)
        for t in outputs:
            self._track(t)
        self._bump()
        if any(_no_data(t) for t in outputs):
            self.values.propagate(func, args, kwargs, out, outputs)
        answer = self.ANSWERS.get(func.overloadpacket.__name__)
        if answer is not None and isinstance(out, torch.Tensor) and out.dim() == 0 and _no_data(out):
            key = id(out)
            self._answers[key] = answer
            weakref.finalize(out, self._answers.pop, key, None)
        return out


def _tensors(out):
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return ()




def storage_bytes(tensors, q: int) -> int:
    """Bytes of the distinct storages behind ``tensors``, each rounded up to ``q``."""
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += _round(st.nbytes(), q)
    return total
