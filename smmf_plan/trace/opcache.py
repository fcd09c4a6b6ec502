"""Operators on tensors without data answered from their outputs' metadata, seen before.

A traced step runs every operator's meta kernel, most of them Python decompositions
(``torch._refs``/``torch._decomp``: a batch norm takes milliseconds); the search for what
would fit (:mod:`smmf_plan.alternatives`) traces the same model under several recipes at two batch
sizes, so the same operator meets inputs of the same metadata again and again (the blocks of a
stage, the recipes that share layers). On meta tensors an operator's outputs are a function of
its inputs' metadata (shape, strides, offset, dtype), its other arguments and the default dtype:
there is no data. :func:`run` keys each call by exactly that and, for an operator seen before,
makes fresh outputs of the recorded shapes, strides and dtypes (``empty_strided`` on meta) instead
of running the kernel.

The mixed-precision traces run on fake CPU tensors (``FakeTensorMode``, whose own cache keys each
call at about the cost of a meta kernel): a fake tensor's key adds its device, and its outputs are
made as ``FakeTensorMode`` makes its cached ones (a ``FakeTensor`` of the same mode around a meta
tensor).

Only what the cache provably reproduces is cached: operators that neither write an argument nor
return an alias of one, whose output shapes do not depend on data, with plain meta tensors or
fake tensors of one mode (not constants) in, and fresh tensors of the same kind out (not views,
offset 0, storages exactly as large as ``empty_strided`` makes them, none shared with an input or
another output); anything else (CPU tensors, symbolic sizes, complex dtypes, unknown argument
types) runs the kernel. The storage tracker (:class:`~smmf_plan.trace.storage.StorageTracker`)
sees the same storages, bytes and order either way.
"""

from __future__ import annotations

#: the most entries kept (the cache is emptied when full); the search for what would fit
#: ResNet-50 on rpi-zero (six recipes at two batch sizes) keeps about 700.
LIMIT = 1 << 14

_CACHE: dict[tuple, tuple | None] = {}
#: calls answered from the cache in this process.
hits = 0
#: per operator: may its calls be cached at all (its schema).
_OPS: dict = {}
_PLAIN = (int, float, bool, str, type(None))


class _Uncacheable(Exception):
    pass


def run(func, args, kwargs, torch):
    """``func(*args, **kwargs)`` on meta (or fake) tensors, answered from the cache where it can be."""
    ok = _OPS.get(func)
    if ok is None:
        ok = _OPS[func] = _cacheable_op(func, torch)
    if not ok:
        return func(*args, **kwargs)
    modes: list = []
    try:
        key = (func, torch.get_default_dtype(), _key(args, torch, modes),
               _key(tuple(kwargs.items()), torch, modes) if kwargs else ())
    except _Uncacheable:
        return func(*args, **kwargs)
    hit = _CACHE.get(key, False)
    if hit is None:  # seen: its outputs cannot be reproduced
        return func(*args, **kwargs)
    if hit is not False:
        global hits
        hits += 1
        kind, metas = hit
        outs = [_make(meta, modes, torch) for meta in metas]
        return outs[0] if kind is torch.Tensor else kind(outs)
    out = func(*args, **kwargs)
    if len(_CACHE) >= LIMIT:
        _CACHE.clear()
    _CACHE[key] = _record(out, (args, kwargs), modes, torch)
    return out


def _make(meta, modes, torch):
    shape, stride, dtype, fake_device = meta
    if fake_device is None:
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    # as FakeTensorMode makes a cached operator's output
    from torch._subclasses.fake_tensor import FakeTensor, in_kernel_invocation_manager

    mode = modes[0]
    with in_kernel_invocation_manager(mode):
        elem = torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    return FakeTensor(mode, elem, fake_device)


def clear() -> None:
    _CACHE.clear()


def _cacheable_op(func, torch) -> bool:
    schema = func._schema
    if any(r.alias_info is not None for r in schema.returns):
        return False
    if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        return False
    tags = set(getattr(func, "tags", ()))
    return not tags & {torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output}


def _key(args, torch, modes: list) -> tuple:
    """The metadata of ``args`` that a meta kernel can see; ``modes`` collects the fake tensors'
    mode (one at most)."""
    out = []
    for a in args:
        t = type(a)
        if t is torch.Tensor or t is torch.nn.Parameter:
            if a.device.type != "meta" or a.layout is not torch.strided or a.dtype.is_complex:
                raise _Uncacheable
            out.append((a.shape, a.stride(), a.storage_offset(), a.dtype))
        elif t is _fake_type(torch):
            if a.constant is not None or a.layout is not torch.strided or a.dtype.is_complex:
                raise _Uncacheable
            if not modes:
                modes.append(a.fake_mode)
            elif a.fake_mode is not modes[0]:
                raise _Uncacheable
            out.append((a.shape, a.stride(), a.storage_offset(), a.dtype, a.fake_device))
        elif t in _PLAIN:
            out.append((t, a))
        elif t is tuple or t is list:
            out.append((t, _key(a, torch, modes)))
        elif t is torch.dtype or t is torch.device or t is torch.layout or t is torch.memory_format:
            out.append(a)
        else:  # symbolic sizes, other tensor subclasses, anything else
            raise _Uncacheable
    return tuple(out)


def _fake_type(torch):
    global _FAKE
    if _FAKE is None:
        from torch._subclasses.fake_tensor import FakeTensor

        _FAKE = FakeTensor
    return _FAKE


_FAKE = None


def _record(out, inputs, modes, torch) -> tuple | None:
    """How to make ``out`` again: (container type, [(shape, stride, dtype, fake device)]), or
    None."""
    from torch.utils._mode_utils import no_dispatch
    from torch.utils._pytree import tree_leaves

    kind = type(out)
    outs = (out,) if kind is torch.Tensor or kind is _fake_type(torch) else \
        out if kind in (tuple, list) else None
    if not outs:
        return None
    if kind is _fake_type(torch):
        kind = torch.Tensor
    metas = []
    storages = {a.untyped_storage()._cdata for a in tree_leaves(inputs) if isinstance(a, torch.Tensor)}
    for o in outs:
        if type(o) is torch.Tensor:
            if o.device.type != "meta":
                return None
            fake_device = None
        elif type(o) is _fake_type(torch) and modes and o.fake_mode is modes[0] \
                and o.constant is None:
            fake_device = o.fake_device
        else:
            return None
        if o._is_view() or o.storage_offset() != 0 or o.layout is not torch.strided \
                or o.dtype.is_complex or o.requires_grad:
            return None
        st = o.untyped_storage()
        if st._cdata in storages:  # an alias of an input or of another output
            return None
        storages.add(st._cdata)
        with no_dispatch():
            replica = torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device="meta")
        if replica.untyped_storage().nbytes() != st.nbytes():
            return None
        metas.append((tuple(o.shape), o.stride(), o.dtype, fake_device))
    return kind, tuple(metas)
