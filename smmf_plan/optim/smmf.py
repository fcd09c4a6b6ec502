"""SMMF — Square-Matricized Momentum Factorization (Park & Lee, AAAI 2025), as a torch optimizer.

Per parameter of ``N`` elements, with ``(n̂, m̂) = square_matricize(shape)`` (Algorithm 2), SMMF keeps
rank-1 non-negative factors of ``|M|`` and ``V`` plus the sign of ``M`` and runs, every step,
decompression → update → compression (Algorithms 1, 3, 4) with the schedules of Algorithm 8,
``β1,t = β·λ^(t-1)`` and ``β2,t = 1 − t^γ``. The state is exactly what
:func:`smmf_plan.layouts.smmf.smmf_state` describes (the planner's definition), allocated once.

Where the paper (Algorithms 1-8) and its reference code (Appendix M, = eai-lab/SMMF) disagree, and
what this implementation does. Where the two differ numerically we follow the **code**, because
the faithfulness tests compare parameter trajectories against it:

* **Sign of exact zeros.** Algorithm 4 stores ``S = 1`` iff ``M ≥ 0``; the code stores ``M > 0``, so
  an exact zero decompresses as negative next step. We follow the code (``M > 0``).
* **Where ε goes.** Algorithm 1 writes ``U = M / sqrt(V + ε)``; section 3.2's text and the code use
  ``M / (sqrt(V) + ε)``. We follow the code.
* **Which factor is normalised.** Algorithm 4 normalises ``r`` when ``n̂ ≤ m̂`` and ``c`` when
  ``n̂ > m̂``; the code normalises ``r`` only when ``n̂ < m̂``, i.e. ``c`` for square matrices too (and
  since square-matricization gives ``n̂ ≥ m̂``, always ``c``). ``r ⊗ c`` is identical either way up
  to rounding; we follow the code. An all-zero vector is left as is (the code's ``if scale != 0``),
  computed with ``where`` so that no host synchronisation happens on GPUs.
* **Coupled weight decay.** Algorithm 6 (``weight_decay_mode="adam"``) is ``G ← G + c·W``. The code
  computes that sum and then drops it (its helpers re-read ``p.grad``), so its coupled mode does
  nothing. We implement Algorithm 6. Decoupled mode (``"adamw"``, Algorithm 7 with the usual
  ``lr`` factor: ``W ← W·(1 − lr·c)``) follows the code.
* **No bias correction** in either the paper or the code; none here.
* **``growth_rate=None``** is typed ``Optional`` by the code but crashes its own range check. Here it
  means "no growth": ``β1,t = β`` for every step.
* **The code's ``Warning(...)``** (β unused but growth rate set) is built and discarded. Here a
  ``UserWarning`` is issued when ``beta=None`` and a non-default ``growth_rate`` is given (the default
  0.999 is indistinguishable from an explicit one, and would make every ``beta=None`` call warn).
* **Sign storage.** The paper counts the sign as 1 bit; the code stores ``torch.bool`` (8 bits).
  ``sign="packed"`` (default) stores ⌈N/8⌉ ``uint8``; ``sign="bool"`` stores what the code stores.
  Both give bit-identical trajectories.
* **State dtype.** The code's factors take the default dtype (fp32) whatever the parameter dtype;
  here they are fp32 for fp16/bf16 parameters and the parameter dtype otherwise (fp32, fp64), as
  ``smmf_state`` says. ``load_state_dict`` keeps them (torch's default would cast to the
  parameter dtype: bool/uint8 signs to float, fp32 factors to bf16 — the code has that bug).
* **Routing** follows the code: with ``vector_reshape=True`` every parameter (0-d and 1-D included)
  is factorized; with ``False`` only parameters whose squeezed rank is 1 use the dense Adam-like path.

Implementation notes: fp32 CPU parameters go through a fused C++ kernel (one sweep per parameter,
see :mod:`smmf_plan.optim._cpp`) wherever a compiler is present — built once on first use;
``SMMF_PLAN_KERNEL=eager`` turns it off — and everything else (GPUs, half precision, no compiler)
through plain eager PyTorch kernels.
Parameters of one group that share ``(n̂, m̂)``, dtype, device and step are
updated together; small ones are stacked into one batch (fewer operator launches). Floating-point
operations are ordered differently from the code (see :mod:`smmf_plan.optim._kernels`), so
trajectories agree to rounding rather than bit for bit.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

import torch

from ..optimizers.smmf import SIGN_STORAGES, is_factorized, smmf_state
from ..shapes import square_matricize
from ._kernels import Hyper, Workspace, dense_update, factorized_update

WEIGHT_DECAY_MODES = ("adamw", "adam")
_DEFAULT_GROWTH = 0.999
#: parameters with at most this many elements are stacked with their same-shaped peers.
STACK_MAX_NUMEL = 1 << 16


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class SMMF(torch.optim.Optimizer):
    """Square-Matricized Momentum Factorization.

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate η (≥ 0).
        beta: first-moment coefficient β in [0, 1]; ``None`` drops the first moment (the update is
            then ``G / (sqrt(V) + eps)``) and its state.
        eps: ε added to ``sqrt(V)`` (≥ 0).
        weight_decay: weight-decay coefficient c (≥ 0).
        decay_rate: γ in [-1, 0] of ``β2,t = 1 − t^γ`` (paper: −0.5 for CNNs, −0.8 for Transformers).
        growth_rate: λ in [0, 1] of ``β1,t = β·λ^(t-1)``; ``None`` keeps ``β1,t = β``.
        vector_reshape: factorize vectors too (``True``, the paper's default) or keep an Adam-like
            dense state for parameters whose squeezed rank is 1.
        weight_decay_mode: ``"adamw"`` (decoupled, Algorithm 7) or ``"adam"`` (Algorithm 6).
        sign: ``"packed"`` (1 bit per element in uint8) or ``"bool"`` (the reference's storage).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        beta: Optional[float] = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_rate: float = -0.5,
        growth_rate: Optional[float] = 0.999,
        vector_reshape: bool = True,
        weight_decay_mode: str = "adamw",
        sign: str = "packed",
    ) -> None:
        _check(isinstance(lr, (int, float)) and 0.0 <= lr < math.inf,
               f"lr must be a finite number >= 0, got {lr!r}")
        _check(beta is None or (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0),
               f"beta must be in [0, 1] or None, got {beta!r}")
        _check(isinstance(eps, (int, float)) and 0.0 <= eps < math.inf,
               f"eps must be a finite number >= 0, got {eps!r}")
        _check(isinstance(weight_decay, (int, float)) and 0.0 <= weight_decay < math.inf,
               f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        _check(isinstance(decay_rate, (int, float)) and -1.0 <= decay_rate <= 0.0,
               f"decay_rate must be in [-1, 0], got {decay_rate!r}")
        _check(growth_rate is None or (isinstance(growth_rate, (int, float)) and 0.0 <= growth_rate <= 1.0),
               f"growth_rate must be in [0, 1] or None, got {growth_rate!r}")
        _check(weight_decay_mode in WEIGHT_DECAY_MODES,
               f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}")
        _check(sign in SIGN_STORAGES, f"sign must be one of {SIGN_STORAGES}, got {sign!r}")
        _check(isinstance(vector_reshape, bool), f"vector_reshape must be a bool, got {vector_reshape!r}")
        if beta is None and growth_rate is not None and growth_rate != _DEFAULT_GROWTH:
            warnings.warn("SMMF: beta=None disables the first moment, so growth_rate is unused",
                          UserWarning, stacklevel=2)
        defaults = dict(lr=lr, beta=beta, eps=eps, weight_decay=weight_decay, decay_rate=decay_rate,
                        growth_rate=growth_rate, vector_reshape=vector_reshape,
                        weight_decay_mode=weight_decay_mode)
        super().__init__(params, defaults)
        self.sign = sign
        #: scratch buffers for row blocks, kept between steps (not state: never saved; about
        #: 9.5 bytes × min(largest N, ~2^20) — see :meth:`workspace_bytes`).
        self._workspace = Workspace()

    # ------------------------------------------------------------------ state
    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        dtype_name = str(p.dtype).removeprefix("torch.")
        tensors = smmf_state(tuple(p.shape), dtype_name, first_moment=group["beta"] is not None,
                             sign=self.sign, vector_reshape=group["vector_reshape"])
        for t in tensors:
            state[t.name] = torch.zeros(t.shape, dtype=getattr(torch, t.dtype), device=p.device)
        state["step"] = 0
        return state

    @staticmethod
    def _check_grad(p: torch.Tensor, g: torch.Tensor) -> None:
        if g.is_sparse:
            raise RuntimeError("SMMF does not support sparse gradients; use a dense embedding "
                               "(sparse=False) or another optimizer for this parameter")
        if p.is_complex() or g.is_complex():
            raise RuntimeError("SMMF does not support complex parameters; view them as real "
                               "(torch.view_as_real) before optimizing")
        if not p.is_floating_point():
            raise RuntimeError(f"SMMF needs floating-point parameters, got {p.dtype}")

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ws = self._workspace
        for group in self.param_groups:
            self._group_step(group, ws)
        return loss

    def _group_step(self, group: dict, ws: Workspace) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        beta, growth = group["beta"], group["growth_rate"]
        coupled = wd != 0.0 and group["weight_decay_mode"] == "adam"
        decoupled = wd != 0.0 and group["weight_decay_mode"] == "adamw"
        buckets: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        to_decay: list[torch.Tensor] = []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            self._check_grad(p, g)
            state = self.state[p]
            if len(state) == 0:
                state = self._init_state(p, group)
            state["step"] += 1
            if coupled:
                g = g.add(p, alpha=wd)
            if decoupled:
                to_decay.append(p)
            if is_factorized(tuple(p.shape), group["vector_reshape"]):
                n, m = square_matricize(tuple(p.shape))
                stack = n * m <= STACK_MAX_NUMEL
                key = ("f", (n, m), p.dtype, p.device, state["step"], stack or id(p))
            else:
                key = ("d", None, p.dtype, p.device, state["step"], None)
            buckets[key].append((p, g))
        if to_decay:
            torch._foreach_mul_(to_decay, 1.0 - lr * wd)
        for key, items in buckets.items():
            kind, shape, _, _, t, _ = key
            beta1 = None if beta is None else beta * (1.0 if growth is None else growth ** (t - 1))
            h = Hyper(lr=lr, eps=group["eps"], beta1=beta1, beta2=1.0 - t ** group["decay_rate"])
            params = [p for p, _ in items]
            grads = [g for _, g in items]
            states = [self.state[p] for p in params]
            if kind == "f":
                if shape[0] * shape[1] == 0:
                    continue
                first = beta is not None
                factorized_update(
                    params, grads,
                    [s["row_m"] for s in states] if first else None,
                    [s["col_m"] for s in states] if first else None,
                    [s["sign"] for s in states] if first else None,
                    [s["row_v"] for s in states], [s["col_v"] for s in states],
                    shape, packed=self.sign == "packed", h=h, ws=ws,
                )
            else:
                dense_update(params, grads,
                             [s["exp_avg"] for s in states] if beta is not None else None,
                             [s["exp_avg_sq"] for s in states], h)

    def workspace_bytes(self) -> int:
        """Bytes of scratch memory this optimizer keeps between steps (not part of the state)."""
        return self._workspace.nbytes()

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint keeping every state tensor's saved dtype (uint8/bool signs, fp32
        factors of half-precision parameters); tensors move to their parameter's device and are
        copied, so the loaded state never aliases ``state_dict``."""
        saved = state_dict["state"]
        stripped = dict(state_dict)
        stripped["state"] = {}
        super().load_state_dict(stripped)
        id_to_param = {}
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups):
            for pid, p in zip(saved_group["params"], group["params"]):
                id_to_param[pid] = p
        for pid, entry in saved.items():
            p = id_to_param.get(pid)
            if p is None:
                continue
            self.state[p] = {
                k: (v.detach().to(device=p.device, copy=True) if isinstance(v, torch.Tensor) else v)
                for k, v in entry.items()
            }
