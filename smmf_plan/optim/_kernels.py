"""Eager (no compiler) SMMF update kernels over batches of same-shaped square-matricized params.

A batch is ``B`` parameters that share ``(n̂, m̂)``, dtype, device, step and group; its gradients
are either a single ``(n̂, m̂)`` view (``B == 1``: no copies) or stacked into ``(B, n̂, m̂)`` (small
parameters, where per-operator overhead dominates). All arithmetic runs in the state dtype
(fp32 for half-precision parameters); half-precision gradients are read through type promotion
without an explicit up-cast copy.

The first moment is computed *scaled*: ``M' = M / (1 - β1,t) = G + (β1,t / (1 - β1,t)) · Ŝ ⊙ (r ⊗ c)``
in one ``addcmul``; ``sign(M') = sign(M)``, the normalised factor is scale-free, the row factor is
multiplied back by ``1 - β1,t`` and the update uses ``lr · (1 - β1,t)``. When ``β1,t == 1`` (the
gradient is ignored) the unscaled form is used. This reorders floating-point operations with
respect to the reference, so trajectories agree to rounding (tested at tight tolerance), not
bit for bit.

Per element, a step makes about a dozen passes over (cache-resident) temporaries: unpack signs,
scale, addcmul, compare/pack, outer product for V, addcmul, two reductions, sqrt, +eps, addcdiv,
abs, two reductions. Each batch is finished before the next starts, so the temporaries of one
tensor stay in the last-level cache, unlike a ``foreach`` Adam that sweeps every tensor per op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._signbits import pack_positive, unpack_signs


@dataclass
class Hyper:
    """Per-batch scalars (Python floats: nothing here forces a host-device sync)."""

    lr: float
    eps: float
    beta1: float | None  # β1,t, or None without a first moment
    beta2: float  # β2,t


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
) -> None:
    """One SMMF step (Algorithms 1, 3, 4) for a batch of parameters of matricized ``shape``.

    ``grads`` are the effective gradients (coupled weight decay already added). Updates the
    parameters and writes the new factors and signs into the given state tensors in place.
    """
    n, m = shape
    batch = len(params)
    vdtype = rows_v[0].dtype
    single = batch == 1
    if single:
        g = grads[0].reshape(n, m)
        rv, cv = rows_v[0].view(n, 1), cols_v[0].view(1, m)
    else:
        g = torch.stack([x.reshape(n, m) for x in grads])
        rv = torch.stack(rows_v).view(batch, n, 1)
        cv = torch.stack(cols_v).view(batch, 1, m)

    first = h.beta1 is not None
    if first:
        b1 = h.beta1
        scaled = b1 < 1.0
        k = b1 / (1.0 - b1) if scaled else b1
        if single:
            rm, cm = rows_m[0].view(n, 1), cols_m[0].view(1, m)
            sgn = signs[0]
        else:
            rm = torch.stack(rows_m).view(batch, n, 1)
            cm = torch.stack(cols_m).view(batch, 1, m)
            sgn = torch.stack(signs)
        # ±1 from the stored signs (exact, so packed and bool storage give identical numbers).
        if packed:
            mat = unpack_signs(sgn, n * m, vdtype)
            mat = mat.reshape(n, m) if single else mat.reshape(batch, n, m)
        else:
            mat = torch.where(sgn, 1.0, -1.0).to(vdtype)
            mat = mat.view(n, m) if single else mat.view(batch, n, m)
        mat.mul_(cm * k)  # Ŝ ⊙ (k·c) broadcast over rows
        if scaled:
            mmat = torch.addcmul(g, mat, rm, out=mat)  # M' = G + Ŝ ⊙ (k·r ⊗ c)
        else:
            mmat = mat.mul_(rm)  # β1,t = 1: M = Ŝ ⊙ (r ⊗ c)
        # new signs (M > 0, as the reference code)
        if packed:
            if single:
                pack_positive(mmat, sgn)
            else:
                new = torch.empty_like(sgn)
                pack_positive(mmat, new)
        else:
            if single:
                torch.gt(mmat, 0, out=sgn)
            else:
                new = mmat > 0
        if not single:
            torch._foreach_copy_(signs, list(new.unbind(0)))

    # V = β2 · (r ⊗ c) + (1 - β2) · G²
    vmat = torch.mul(rv * h.beta2, cv)
    vmat.addcmul_(g, g, value=1.0 - h.beta2)
    new_rv = vmat.sum(dim=-1)
    new_cv = vmat.sum(dim=-2)
    _normalize_(new_rv, new_cv)
    if single:
        rows_v[0].copy_(new_rv)
        cols_v[0].copy_(new_cv)
    else:
        torch._foreach_copy_(rows_v, list(new_rv.unbind(0)))
        torch._foreach_copy_(cols_v, list(new_cv.unbind(0)))
    denom = vmat.sqrt_().add_(h.eps)

    numer = mmat if first else g
    value = -h.lr * ((1.0 - h.beta1) if (first and scaled) else 1.0)
    _apply(params, numer, denom, value, n, m)

    if first:
        amat = mmat.abs_()
        new_rm = amat.sum(dim=-1)
        new_cm = amat.sum(dim=-2)
        if scaled:
            new_rm.mul_(1.0 - b1)
        _normalize_(new_rm, new_cm)
        if single:
            rows_m[0].copy_(new_rm)
            cols_m[0].copy_(new_cm)
        else:
            torch._foreach_copy_(rows_m, list(new_rm.unbind(0)))
            torch._foreach_copy_(cols_m, list(new_cm.unbind(0)))


def _apply(params, numer, denom, value, n, m) -> None:
    """``p += value · numer / denom`` for every parameter of the batch (in place)."""
    if numer.dim() == 2:
        p = params[0]
        if p.is_contiguous():
            p.view(n, m).addcdiv_(numer, denom, value=value)
        else:
            p.add_((numer / denom).view(p.shape), alpha=value)
        return
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
    torch._foreach_addcmul_(exp_avg_sqs, g, g, 1.0 - h.beta2)
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
