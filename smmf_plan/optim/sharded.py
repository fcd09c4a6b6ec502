"""SMMF on parameters sharded on dim 0 (FSDP2 ``fully_shard``, HSDP): the exact sharded step.

Every SMMF operation is elementwise or a row/column sum of the square-matricized ``(n̂, m̂)``
matrix, and sums split across ranks. A rank holding rows ``[a, b)`` of a parameter of ``d0`` rows
(``torch.chunk`` on dim 0) holds the contiguous flat range ``[a·R, b·R)`` of its ``N = d0·R``
elements, which covers at most a partial matrix row, some whole rows and a partial row. So each
rank keeps

* the rank-1 factors ``row_m, col_m, row_v, col_v`` of the **full** matrix, replicated (plain
  tensors, the same on every rank), and
* the sign of its own elements only: ``⌈k/8⌉`` bytes packed (``k`` local elements, the bit layout of
  :mod:`smmf_plan.optim._signbits` over the local range) or ``bool`` of the local shape,

and a step is: decompress and update the local elements with the old factors (local data only),
add each element's new ``V`` and ``|M|`` into per-row and per-column partial sums, then **one**
``all_reduce(SUM)`` of all parameters' partial sums (``2·(n̂+m̂)`` values each; one call per shard
group and state dtype, one in practice), which gives every rank the sums a single process would
compute; the factors are then normalized as in :mod:`smmf_plan.optim._kernels`. Nothing else is
communicated. The result is the single-process SMMF trajectory up to the order of floating-point
sums (tests: world 2 and 4, uneven shards, bf16 ``MixedPrecisionPolicy``). The update of step ``t``
needs only local data, so the all-reduce could overlap the next forward; here it is synchronous.

Checkpoints. ``state_dict()`` presents every per-element tensor as a ``DTensor`` sharded like the
parameter, so that torch.distributed.checkpoint can reshard it (saved at world 2, resumed at world
4): dense-path moments and a ``bool`` sign wrap their local tensors (no copy); a packed sign is a
``uint8`` ``(d0, R/8)`` DTensor over the same bytes (no copy) when ``R % 8 == 0`` — every rank's
range then starts on a byte — and otherwise an unpacked ``bool`` DTensor shaped like the parameter
(a temporary of one byte per local element, while the state dict lives). Factors stay plain,
replicated tensors. :func:`local_entry` turns a loaded entry back into this rank's state.

Replicated DTensors (``Replicate()`` on every mesh dimension) and plain tensors in the same
optimizer are whole on every rank and need no communication. Other placements (``Shard(d)`` with
``d > 0`` from ``shard_placement_fn``, ``Partial``) are refused with a clear error.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from ..optimizers.smmf import is_factorized, shard_state
from ..shapes import ParamSpec, square_matricize
from ._kernels import Hyper, _normalize_, dense_update
from ._signbits import bools_to_bytes, pack_positive

_DTENSOR: list = []  # [DTensor class] once imported, [None] where torch.distributed is absent


def _dtensor_class():
    if not _DTENSOR:
        cls = None
        if torch.distributed.is_available():
            from torch.distributed.tensor import DTensor

            cls = DTensor
        _DTENSOR.append(cls)
    return _DTENSOR[0]


def applies(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` holds any DTensor parameter (then :func:`step` runs its steps)."""
    cls = _dtensor_class()
    return cls is not None and any(isinstance(p, cls) for g in opt.param_groups for p in g["params"])


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Shard:
    """Where this rank's part of a parameter lies in the whole tensor."""

    #: flat index of the first local element in the full (row-major) parameter
    offset: int
    #: local elements
    numel: int
    #: the ranks that share this parameter's rows (``None``: the parameter is whole here)
    group: Any = None


def locate(p: torch.Tensor) -> Shard:
    """The :class:`Shard` of parameter ``p`` on this rank (``torch.chunk`` rule on dim 0)."""
    cls = _dtensor_class()
    if cls is None or not isinstance(p, cls):
        return Shard(0, p.numel())
    mesh, placements = p.device_mesh, p.placements
    shard_dims = []
    for dim, placement in enumerate(placements):
        if placement.is_shard():
            if placement.dim != 0:
                raise RuntimeError(
                    f"SMMF supports parameters sharded on dim 0 (FSDP2's default); this one is "
                    f"{placement} on a {tuple(p.shape)} tensor: drop shard_placement_fn for it")
            shard_dims.append(dim)
        elif not placement.is_replicate():
            raise RuntimeError(f"SMMF cannot step a parameter with placement {placement}: its "
                               "local values are not the parameter's (redistribute it first)")
    local = p.to_local()
    if not shard_dims:
        return Shard(0, local.numel())
    if len(shard_dims) > 1:
        raise RuntimeError("SMMF supports one sharded mesh dimension per parameter (FSDP2/HSDP)")
    dim = shard_dims[0]
    world, rank = mesh.size(dim), mesh.get_local_rank(dim)
    rows = p.shape[0]
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    if local.shape[0] != stop - start:
        raise RuntimeError(f"SMMF: a {tuple(p.shape)} parameter's local shard has "
                           f"{local.shape[0]} rows on rank {rank} of {world}, not the "
                           f"torch.chunk rule's {stop - start}")
    per_row = p.numel() // rows if rows else 0
    return Shard(start * per_row, local.numel(), mesh.get_group(dim))


def _local(t: torch.Tensor) -> torch.Tensor:
    cls = _dtensor_class()
    return t.to_local() if cls is not None and isinstance(t, cls) else t


def segments(offset: int, numel: int, m: int) -> list[tuple[int, int, int, int, int]]:
    """The flat range ``[offset, offset + numel)`` of a matrix with ``m`` columns as at most three
    rectangles ``(row, col, height, width, local_start)``: a partial first row, whole rows, a
    partial last row."""
    out = []
    i, end = offset, offset + numel
    if i % m and i < end:
        width = min(m - i % m, end - i)
        out.append((i // m, i % m, 1, width, i - offset))
        i += width
    whole = (end - i) // m
    if whole:
        out.append((i // m, 0, whole, m, i - offset))
        i += whole * m
    if i < end:
        out.append((i // m, 0, 1, end - i, i - offset))
    return out


# --------------------------------------------------------------------------- state
def init_state(opt, p: torch.Tensor, group: dict, where: Shard) -> dict:
    """This rank's state for ``p``, exactly what the planner's per-rank rule
    (:func:`smmf_plan.optimizers.smmf.shard_state`) counts: the full matrix's factors and the
    local sign (factorized path), or moments of the local shard (dense path)."""
    state = opt.state[p]
    options = {"beta": group["beta"], "sign": opt.sign, "vector_reshape": group["vector_reshape"]}
    spec = ParamSpec("", tuple(p.shape), str(p.dtype).removeprefix("torch."))
    for t in shard_state(options, spec, tuple(_local(p).shape), ""):
        state[t.name] = torch.zeros(t.shape, dtype=getattr(torch, t.dtype), device=p.device)
    state["step"] = 0
    return state


# --------------------------------------------------------------------------- step
@dataclass
class _Pending:
    """A factorized parameter between its local update and the all-reduce of its sums."""

    state: dict
    shape: tuple[int, int]
    sums: torch.Tensor  # [row_v | col_v | row_m | col_m] partial sums, a view of the fused buffer


def step(opt) -> None:
    """One SMMF step over every parameter group of ``opt`` (see the module docstring)."""
    plans: list[tuple] = []
    sizes: dict[tuple, int] = defaultdict(int)
    dense: dict[tuple, list] = defaultdict(list)
    for group in opt.param_groups:
        wd = group["weight_decay"]
        coupled = wd != 0.0 and group["weight_decay_mode"] == "adam"
        decay = 1.0 - group["lr"] * wd if wd != 0.0 and group["weight_decay_mode"] == "adamw" else 1.0
        for p in group["params"]:
            if p.grad is None:
                continue
            opt._check_grad(p, p.grad)
            where = locate(p)
            state = opt.state[p]
            if len(state) == 0:
                state = init_state(opt, p, group, where)
            state["step"] += 1
            local, g = _local(p), _local(p.grad)
            if coupled:
                g = g.add(local, alpha=wd)
            if decay != 1.0:
                local.mul_(decay)
            if not is_factorized(tuple(p.shape), group["vector_reshape"]):
                dense[(id(group), state["step"], p.dtype)].append((local, g, state, group))
                continue
            n, m = square_matricize(tuple(p.shape))
            if n * m == 0:
                continue
            vdtype = state["row_v"].dtype
            key = (where.group, vdtype, p.device)
            width = 2 * (n + m) if group["beta"] is not None else n + m
            plans.append((key, sizes[key], width, local, g, state, group, where, (n, m)))
            sizes[key] += width
    buffers = {key: torch.zeros(size, dtype=key[1], device=key[2]) for key, size in sizes.items()}
    pending = []
    for key, start, width, local, g, state, group, where, shape in plans:
        sums = buffers[key][start:start + width]
        _local_update(local, g, state, shape, where, opt._hyper(group, state["step"]),
                      opt.sign == "packed", sums)
        pending.append(_Pending(state, shape, sums))
    for (pg, _, _), buf in buffers.items():
        if pg is not None:
            torch.distributed.all_reduce(buf, group=pg)
    for item in pending:
        _set_factors(item)
    for (_, t, _), items in dense.items():
        h = opt._hyper(items[0][3], t)
        dense_update([x[0] for x in items], [x[1] for x in items],
                     [x[2]["exp_avg"] for x in items] if h.beta1 is not None else None,
                     [x[2]["exp_avg_sq"] for x in items], h)


def _local_update(local: torch.Tensor, g: torch.Tensor, state: dict, shape: tuple[int, int],
                  where: Shard, h: Hyper, packed: bool, sums: torch.Tensor) -> None:
    """Update this rank's elements of one factorized parameter with the old factors and add their
    new ``V`` and ``|M|`` into the row/column partial ``sums`` (the reference's operations and
    order, :func:`smmf_plan.optim._kernels._single_update`)."""
    k = where.numel
    if k == 0:
        return
    n, m = shape
    first = h.beta1 is not None
    rv, cv = state["row_v"], state["col_v"]
    vdtype = rv.dtype
    acc_rv, acc_cv = sums[:n], sums[n:n + m]
    work = local if local.is_contiguous() else local.contiguous()
    flat_p = work.view(-1)
    flat_g = g.reshape(-1)
    rv_b2 = rv * h.beta2
    vmat = torch.empty(k, dtype=vdtype, device=local.device)
    pieces = segments(where.offset, k, m)
    if first:
        rm, cm, sign = state["row_m"], state["col_m"], state["sign"]
        if packed:
            mat = _unpack(sign, k).to(vdtype).mul_(2.0).sub_(1.0)  # exact ±1
        else:
            mat = sign.reshape(-1).to(vdtype).mul_(2.0).sub_(1.0)  # exact ±1
    for r0, c0, rows, cols, at in pieces:
        span = slice(at, at + rows * cols)
        gb = flat_g[span].view(rows, cols)
        vb = vmat[span].view(rows, cols)
        if first:
            mb = mat[span].view(rows, cols)
            mb.mul_(rm[r0:r0 + rows, None]).mul_(cm[None, c0:c0 + cols]).mul_(h.beta1)
            mb.add_(gb, alpha=1.0 - h.beta1)
        torch.mul(rv_b2[r0:r0 + rows, None], cv[None, c0:c0 + cols], out=vb)
        vb.addcmul_(gb, gb, value=1.0 - h.beta2)
        acc_rv[r0:r0 + rows].add_(vb.sum(dim=1))
        acc_cv[c0:c0 + cols].add_(vb.sum(dim=0))
    if first:  # compression, part 1: the local signs (M > 0, as the reference code)
        if packed:
            pack_positive(mat, sign)
        else:
            torch.gt(mat.view(sign.shape), 0, out=sign)
    vmat.sqrt_().add_(h.eps)
    flat_p.addcdiv_(mat if first else flat_g, vmat, value=-h.lr)
    if work is not local:
        local.copy_(work)
    if first:
        mat.abs_()
        acc_rm, acc_cm = sums[n + m:2 * n + m], sums[2 * n + m:]
        for r0, c0, rows, cols, at in pieces:
            mb = mat[at:at + rows * cols].view(rows, cols)
            acc_rm[r0:r0 + rows].add_(mb.sum(dim=1))
            acc_cm[c0:c0 + cols].add_(mb.sum(dim=0))


def _set_factors(item: _Pending) -> None:
    """The new factors from the all-reduced sums, normalized as a single process does."""
    n, m = item.shape
    state, sums = item.state, item.sums
    pairs = [("row_v", "col_v", 0)]
    if "row_m" in state:
        pairs.append(("row_m", "col_m", n + m))
    for row, col, at in pairs:
        r, c = sums[at:at + n].clone(), sums[at + n:at + n + m].clone()
        _normalize_(r.view(1, n), c.view(1, m))
        state[row].copy_(r)
        state[col].copy_(c)


# --------------------------------------------------------------------------- checkpoints
def _param_order(opt) -> list[torch.Tensor]:
    """Parameters in ``state_dict()``'s numbering (groups in order, ids from 0)."""
    seen: dict[int, int] = {}
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen[id(p)] = len(out)
                out.append(p)
    return out


def state_dict_hook(opt, state_dict: dict) -> dict:
    """``Optimizer.state_dict`` post-hook: per-element state of sharded parameters as DTensors
    sharded like the parameter (see the module docstring)."""
    if not applies(opt):
        return state_dict
    params = _param_order(opt)
    out = dict(state_dict)
    out["state"] = {}
    for pid, entry in state_dict["state"].items():
        p = params[pid] if isinstance(pid, int) and pid < len(params) else None
        out["state"][pid] = _global_entry(opt, p, entry) if p is not None else entry
    return out


def _from_local(p, local: torch.Tensor, shape: tuple) -> torch.Tensor:
    cls = _dtensor_class()
    stride = tuple(torch.empty(shape, device="meta").stride())
    return cls.from_local(local, p.device_mesh, p.placements, run_check=False, shape=torch.Size(shape),
                          stride=stride)


def _global_entry(opt, p: torch.Tensor, entry: dict) -> dict:
    cls = _dtensor_class()
    if not isinstance(p, cls) or all(pl.is_replicate() for pl in p.placements):
        return entry
    local = p.to_local()
    shape, local_shape = tuple(p.shape), tuple(local.shape)
    out = dict(entry)
    for name, value in entry.items():
        if not isinstance(value, torch.Tensor) or isinstance(value, cls):
            continue
        if name in ("exp_avg", "exp_avg_sq") or (name == "sign" and value.dtype == torch.bool):
            out[name] = _from_local(p, value.view(local_shape), shape)
        elif name == "sign":  # packed bits of the local elements
            per_row = p.numel() // shape[0] if shape[0] else 0
            if per_row % 8 == 0:
                out[name] = _from_local(p, value.view(local_shape[0], per_row // 8),
                                        (shape[0], per_row // 8))
            else:
                bits = _unpack(value, local.numel()).bool()
                out[name] = _from_local(p, bits.view(local_shape), shape)
    return out


def local_entry(opt, p: torch.Tensor, entry: dict) -> dict:
    """A loaded state entry of ``p`` (DTensor forms of :func:`state_dict_hook`, resharded by DCP)
    as this rank keeps it; entries of unsharded parameters are returned as they are."""
    cls = _dtensor_class()
    if cls is None or not any(isinstance(v, cls) for v in entry.values()):
        return entry
    out = dict(entry)
    for name, value in entry.items():
        if not isinstance(value, cls):
            continue
        local = value.to_local()
        if name == "sign":
            flat = local.reshape(-1)
            if flat.dtype == torch.bool and opt.sign == "packed":
                flat = _pack_bools(flat)
            elif flat.dtype == torch.uint8 and opt.sign == "bool":
                flat = _unpack(flat, _local(p).numel()).bool()
            local = flat.view(_local(p).shape) if flat.dtype == torch.bool else flat
        out[name] = local
    return out


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The first ``numel`` bits of ``packed`` (uint8, least significant first) as 0/1 ``uint8``.
    Shifts, not :mod:`._signbits`' cached table, so that it runs under any FakeTensorMode."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = packed.reshape(-1, 1).bitwise_right_shift(shifts).bitwise_and_(1)
    return bits.reshape(-1)[:numel]


def _pack_bools(flags: torch.Tensor) -> torch.Tensor:
    numel = flags.numel()
    padded = torch.zeros(numel + (-numel) % 8, dtype=torch.bool, device=flags.device)
    padded[:numel] = flags
    return bools_to_bytes(padded)


def install(opt) -> None:
    """Register the checkpoint hook on a new optimizer (a no-op for unsharded parameters)."""
    opt.register_state_dict_post_hook(state_dict_hook)
