"""The accuracy oracle of SMMF's kernels: the paper's reference code (Appendix M) run in float64.

A kernel is "as accurate as the reference" when, in fp32, its trajectory and its factors stay as
close to this oracle as the reference code itself run in fp32 does. Gradients keep a fixed sign
per element (magnitudes vary), so no first moment passes through zero: a sign bit flipped by
rounding would be amplified into a full ``±r·c`` the next step and turn the comparison into
chaos, whereas this way the errors measure the arithmetic — above all the row and column sums.

Used by ``tests/test_optim_smmf_accuracy.py``, in-process and (for the Triton kernel under the
interpreter) in a subprocess that prints :func:`errors` as JSON.
"""

from __future__ import annotations

import contextlib

import torch

from reference_smmf import SMMF as ReferenceSMMF


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def problem(shape, steps, seed=0):
    """Start point and fixed-sign float64 gradients for ``steps`` steps."""
    gen = torch.Generator().manual_seed(seed)
    start = 1e-2 * torch.randn(shape, generator=gen, dtype=torch.float64)  # small: p·eps ≪ the travel
    sign = torch.randn(shape, generator=gen, dtype=torch.float64).sign()
    sign[sign == 0] = 1.0
    grads = [sign * (0.25 + torch.rand(shape, generator=gen, dtype=torch.float64)) for _ in range(steps)]
    return start, grads


def run(make, start, grads, dtype, coupled=0.0):
    """Parameter after the steps and the four factor vectors (row_m, col_m, row_v, col_v as
    available; the reference's names are mapped). ``coupled``: feed ``G + c·W`` (the reference
    drops its own coupled decay, Algorithm 6)."""
    p = torch.nn.Parameter(start.to(dtype, copy=True))
    opt = make([p])
    for g in grads:
        gd = g.to(dtype)
        p.grad = gd + coupled * p.detach() if coupled else gd
        opt.step()
    st = opt.state[p]
    if "momentum_v" in st:
        factors = {"row_v": st["momentum_v"][0], "col_v": st["momentum_v"][1]}
        if "momentum_m" in st:
            factors.update(row_m=st["momentum_m"][0], col_m=st["momentum_m"][1])
    else:
        factors = {k: st[k] for k in ("row_m", "col_m", "row_v", "col_v") if k in st}
    return p.detach().double(), {k: v.double() for k, v in factors.items()}


def oracle(start, grads, ref_kw, coupled=0.0):
    with default_dtype(torch.float64):
        return run(lambda ps: ReferenceSMMF(ps, lr=1e-2, **ref_kw), start, grads, torch.float64, coupled)


def errors(result, truth, start):
    """(parameter error relative to the distance travelled, largest factor error relative to
    that factor's largest entry)."""
    p, factors = result
    tp, tfactors = truth
    travel = (tp - start).abs().max().item()
    perr = (p - tp).abs().max().item() / travel
    ferr = max(((factors[k] - tfactors[k]).abs().max() / tfactors[k].abs().max().clamp_min(1e-300)).item()
               for k in tfactors)
    return perr, ferr
