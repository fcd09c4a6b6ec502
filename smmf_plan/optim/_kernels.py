"""Eager (no compiler) SMMF update kernels over batches of same-shaped square-matricized params.

A batch is ``B`` parameters that share ``(n̂, m̂)``, dtype, device, step and group; its gradients
are either a single ``(n̂, m̂)`` view (``B == 1``: no copies) or stacked into ``(B, n̂, m̂)`` (small
parameters, where per-operator overhead dominates). All arithmetic runs in the state dtype
(fp32 for half-precision parameters); half-precision gradients are read through type promotion
without an explicit up-cast copy.

The first moment mirrors the reference code operation for operation (``r ⊗ c``, sign,
``·β1 + (1-β1)·G``), so ``M`` — and hence the sign bits, which amplify any rounding difference of a
near-zero element into a full ``±r_i·c_j`` flip next step — is bit-identical to the reference given
the same factors. ``V`` only scales the update, so it takes the shorter
``(β2·r) ⊗ c + (1-β2)·G·G`` (two passes instead of four), equal to rounding. Row sums are the same reductions; column sums of a
parameter processed in several row blocks are accumulated block by block, which may round
differently from the reference's single reduction.

Per element, a step makes about a dozen passes over (cache-resident) temporaries: unpack signs,
scale, addcmul, compare/pack, outer product for V, addcmul, two reductions, sqrt, +eps, addcdiv,
abs, two reductions. Each batch is finished before the next starts, so the temporaries of one
tensor stay in the last-level cache, unlike a ``foreach`` Adam that sweeps every tensor per op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _layout
from ._signbits import pack_positive, positive_into, sign_lut, unpack_bools, unpack_signs


def is_fake(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``FakeTensor`` (no data: a step only allocates)."""
    return isinstance(t, _fake_tensor_class())


def _fake_tensor_class():
    global _FAKE
    if _FAKE is None:
        from torch._subclasses.fake_tensor import FakeTensor

        _FAKE = FakeTensor
    return _FAKE


_FAKE = None


@dataclass
class Hyper:
    """Per-batch scalars (Python floats: nothing here forces a host-device sync)."""

    lr: float
    eps: float
    beta1: float | None  # β1,t, or None without a first moment
    beta2: float  # β2,t


class Workspace:
    """Scratch buffers shared by every row block (at most ``BLOCK_NUMEL``-ish elements each, kept
    by the optimizer between steps): a fresh multi-megabyte allocation per block costs more in
    page faults than the arithmetic."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}
        self._cache: dict[str, tuple] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel]

    def cached(self, name: str, key, make):
        """``make()``'s result, reused while ``key`` is unchanged (the fused CUDA kernel's table of
        pointers: the caching allocator usually hands out the same gradient blocks every step,
        so the table is copied to the device once, not every step)."""
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = self._cache[name] = (key, make())
        return hit[1]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


def _normalize_(row: torch.Tensor, col: torch.Tensor) -> None:
    """Divide the shorter-side vector by its sum (the reference's rule: the column vector when
    ``n̂ ≥ m̂``), leaving all-zero vectors unchanged; ``row``/``col`` are ``(B, n)``/``(B, m)``."""
    vec = row if row.shape[-1] < col.shape[-1] else col
    total = vec.sum(dim=-1, keepdim=True)
    vec.div_(torch.where(total == 0, torch.ones_like(total), total))


def factorized_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    rows_m: list[torch.Tensor] | None,
    cols_m: list[torch.Tensor] | None,
    signs: list[torch.Tensor] | None,
    rows_v: list[torch.Tensor],
    cols_v: list[torch.Tensor],
    shape: tuple[int, int],
    packed: bool,
    h: Hyper,
    ws: Workspace | None = None,
) -> None:
    """One SMMF step (Algorithms 1, 3, 4) for a batch of parameters of matricized ``shape``.

    ``grads`` are the effective gradients (coupled weight decay already added). Updates the
    parameters and writes the new factors and signs into the given state tensors in place.
    A single parameter is processed in blocks of rows (:func:`_single_update`); several are
    stacked (:func:`_stacked_update`).
    """
    first = h.beta1 is not None
    if len(params) == 1:
        _single_update(params[0], grads[0], rows_m[0] if first else None,
                       cols_m[0] if first else None, signs[0] if first else None,
                       rows_v[0], cols_v[0], shape, packed, h, ws or Workspace())
    else:
        _stacked_update(params, grads, rows_m, cols_m, signs, rows_v, cols_v, shape, packed, h)


#: elements per row block of :func:`_single_update` (its temporaries stay in cache); defined
#: beside the state layout so the planner's temporaries rule uses the same number.
BLOCK_NUMEL = _layout.BLOCK_NUMEL


def _single_update(p, g, rm, cm, sgn, rv, cv, shape, packed, h: Hyper, ws: Workspace) -> None:
    n, m = shape
    work = p if p.is_contiguous() else p.contiguous()
    pmat = work.view(n, m)
    gmat = g.reshape(n, m)
    vdtype = rv.dtype
    first = h.beta1 is not None
    rows = max(8, (BLOCK_NUMEL // max(m, 1)) // 8 * 8)  # = optimizers.smmf.block_rows (patchable in tests)
    rv_col = (rv * h.beta2).view(n, 1)  # a copy: old factors stay readable while new ones are written
    cv_row = cv.view(1, m)
    acc_cv = torch.zeros(m, dtype=vdtype, device=p.device)
    if first:
        rm_col = rm.clone().view(n, 1)
        cm_row = cm.view(1, m)
        acc_cm = torch.zeros(m, dtype=vdtype, device=p.device)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        gb = gmat[i0:i1]
        if first:
            # decompression: ±1 from the stored signs (exact, so packed and bool agree bitwise),
            # then the reference's own operations and rounding: ±(r ⊗ c)·β1 + (1 - β1)·G
            if packed:
                sb = sgn[i0 * m // 8: -(-(i1 * m) // 8)]
                idx = ws.get("idx", sb.numel(), torch.int32, p.device)
                idx.copy_(sb)
                full = ws.get("mat", sb.numel() * 8, vdtype, p.device).view(-1, 8)
                torch.index_select(sign_lut(p.device, vdtype, fake=is_fake(p)), 0, idx, out=full)
                mat = full.view(-1)[: (i1 - i0) * m].view(i1 - i0, m)
            else:
                sb = sgn[i0:i1]
                mat = ws.get("mat", (i1 - i0) * m, vdtype, p.device).view(i1 - i0, m)
                mat.copy_(sb.view(torch.uint8)).mul_(2.0).sub_(1.0)  # exact ±1
            mat.mul_(rm_col[i0:i1]).mul_(cm_row).mul_(h.beta1).add_(gb, alpha=1.0 - h.beta1)
            # compression, part 1: signs (M > 0, as the reference code)
            if packed:
                pack_positive(mat, sb, ws)
            else:
                positive_into(mat, sb, ws)
        vmat = ws.get("vmat", (i1 - i0) * m, vdtype, p.device).view(i1 - i0, m)
        torch.mul(rv_col[i0:i1], cv_row, out=vmat)
        vmat.addcmul_(gb, gb, value=1.0 - h.beta2)
        torch.sum(vmat, dim=1, out=rv[i0:i1])
        acc_cv.add_(vmat.sum(dim=0))
        vmat.sqrt_().add_(h.eps)
        pmat[i0:i1].addcdiv_(mat if first else gb, vmat, value=-h.lr)
        if first:
            mat.abs_()
            torch.sum(mat, dim=1, out=rm[i0:i1])
            acc_cm.add_(mat.sum(dim=0))
    _normalize_(rv.view(1, n), acc_cv.view(1, m))
    cv.copy_(acc_cv)
    if first:
        _normalize_(rm.view(1, n), acc_cm.view(1, m))
        cm.copy_(acc_cm)
    if work is not p:
        p.copy_(work)


def _stacked_update(params, grads, rows_m, cols_m, signs, rows_v, cols_v, shape, packed,
                    h: Hyper) -> None:
    n, m = shape
    batch = len(params)
    vdtype = rows_v[0].dtype
    g = torch.stack([x.reshape(n, m) for x in grads])
    rv = torch.stack(rows_v).view(batch, n, 1)
    cv = torch.stack(cols_v).view(batch, 1, m)
    first = h.beta1 is not None
    if first:
        rm = torch.stack(rows_m).view(batch, n, 1)
        cm = torch.stack(cols_m).view(batch, 1, m)
        sgn = torch.stack(signs)
        if packed:
            mat = unpack_signs(sgn, n * m, vdtype).reshape(batch, n, m)
        else:
            mat = unpack_bools(sgn, vdtype).view(batch, n, m)
        mat.mul_(rm).mul_(cm).mul_(h.beta1).add_(g, alpha=1.0 - h.beta1)
        if packed:
            new = torch.empty_like(sgn)
            pack_positive(mat, new)
        else:
            new = mat > 0
        torch._foreach_copy_(signs, list(new.unbind(0)))

    vmat = torch.mul(rv * h.beta2, cv)
    vmat.addcmul_(g, g, value=1.0 - h.beta2)
    new_rv = vmat.sum(dim=-1)
    new_cv = vmat.sum(dim=-2)
    _normalize_(new_rv, new_cv)
    torch._foreach_copy_(rows_v, list(new_rv.unbind(0)))
    torch._foreach_copy_(cols_v, list(new_cv.unbind(0)))
    denom = vmat.sqrt_().add_(h.eps)

    numer = mat if first else g
    _apply(params, numer, denom, -h.lr, n, m)

    if first:
        amat = mat.abs_()
        new_rm = amat.sum(dim=-1)
        new_cm = amat.sum(dim=-2)
        _normalize_(new_rm, new_cm)
        torch._foreach_copy_(rows_m, list(new_rm.unbind(0)))
        torch._foreach_copy_(cols_m, list(new_cm.unbind(0)))


def _apply(params, numer, denom, value, n, m) -> None:
    """``p += value · numer / denom`` for every parameter of a stacked batch (in place)."""
    if all(p.is_contiguous() for p in params):
        views = [p.view(n, m) for p in params]
        torch._foreach_addcdiv_(views, list(numer.unbind(0)), list(denom.unbind(0)), value)
    else:
        upd = numer / denom
        for p, u in zip(params, upd.unbind(0)):
            p.add_(u.view(p.shape), alpha=value)


def dense_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor] | None,
    exp_avg_sqs: list[torch.Tensor],
    h: Hyper,
) -> None:
    """The reference's ``_adam`` path (no bias correction) for un-factorized vectors, batched
    with ``foreach`` ops; state is fp32 for half-precision parameters."""
    vdtype = exp_avg_sqs[0].dtype
    g = [x if x.dtype == vdtype else x.to(vdtype) for x in grads]
    torch._foreach_mul_(exp_avg_sqs, h.beta2)
    torch._foreach_add_(exp_avg_sqs, torch._foreach_mul(g, g), alpha=1.0 - h.beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, h.eps)
    if h.beta1 is not None:
        torch._foreach_mul_(exp_avgs, h.beta1)
        torch._foreach_add_(exp_avgs, g, alpha=1.0 - h.beta1)
        numer = exp_avgs
    else:
        numer = g
    if all(p.dtype == vdtype for p in params):
        torch._foreach_addcdiv_(params, numer, denom, -h.lr)
    else:
        upd = torch._foreach_div(numer, denom)
        for p, u in zip(params, upd):
            p.add_(u, alpha=-h.lr)
