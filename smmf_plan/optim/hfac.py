"""H-Fac: memory-efficient optimization with factorized Hamiltonian descent.

Nguyen, Chen, Liu and Liu, "Memory-Efficient Optimization with Factorized Hamiltonian Descent",
arXiv 2406.09958 (v3; AISTATS 2025). No maintained implementation exists; this one follows the
paper's update equations. For a parameter ``X`` viewed as an ``m × n`` matrix
(:func:`smmf_plan.optimizers.hfac.hfac_matrix`: rank-2 tensors as they are, any other rank
square-matricized as SMMF does) with gradient ``G`` at step ``t``::

    β̂₁ = β₁(1 - β₁^(t-1)) / (1 - β₁^t)        β̂₂ = β₂(1 - β₂^(t-1)) / (1 - β₂^t)
    u ← β̂₁u + (1 - β̂₁)·G1ₙ/n                   v ← β̂₁v + (1 - β̂₁)·Gᵀ1ₘ/m
    r ← β̂₂r + (1 - β̂₂)·(G² + ε)1ₙ              s ← β̂₂s + (1 - β̂₂)·(G² + ε)ᵀ1ₘ
    V̂ = r sᵀ / (1ₘᵀ r)
    φ = β̂₁(u1ₙᵀ - G1ₙ1ₙᵀ/n) / √(r1ₙᵀ/n)        ψ = β̂₁(1ₘvᵀ - 1ₘ1ₘᵀG/m) / √(1ₘsᵀ/m)
    X ← X - η(½(φ + ψ) + clip(G / √V̂) + λX),    clip(U) = U / max(1, RMS(U)/d)

``φ`` is constant along each row and ``ψ`` along each column, so neither is materialized as a
matrix. The paper's material we found states the equations but not default hyper-parameters;
the defaults here are β₁ = 0.9, β₂ = 0.999 (Adam's), ε = 1e-30 and d = 1 (Adafactor's, whose
second-moment factorization and update clipping H-Fac adopts), no weight decay.

State per parameter (:func:`smmf_plan.optimizers.hfac.hfac_state`, the planner's definition):
``u``, ``v``, ``r``, ``s`` (fp32 for half-precision parameters) and a Python-int ``step``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch

from ..optimizers.hfac import FACTORS, hfac_matrix, hfac_state


class HFac(torch.optim.Optimizer):
    """H-Fac (see the module docstring): ``lr``, ``betas=(β₁, β₂)``, ``eps`` (added to G²),
    ``clip_threshold`` (d) and decoupled ``weight_decay`` (λ)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-30, clip_threshold: float = 1.0, weight_decay: float = 0.0) -> None:
        if not lr >= 0.0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0 (it keeps r and s positive), got {eps}")
        if not clip_threshold > 0.0:
            raise ValueError(f"clip_threshold must be > 0, got {clip_threshold}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      clip_threshold=clip_threshold, weight_decay=weight_decay))

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        for t in hfac_state(tuple(p.shape), str(p.dtype).removeprefix("torch.")):
            state[t.name] = torch.zeros(t.shape, dtype=getattr(torch, t.dtype), device=p.device)
        state["step"] = 0
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("HFac does not support sparse gradients")
                state = self.state[p] if self.state.get(p) else self._init_state(p)
                self._update(p, state, group)
        return loss

    @staticmethod
    def _update(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        b1 = beta1 * (1 - beta1 ** (t - 1)) / (1 - beta1 ** t)
        b2 = beta2 * (1 - beta2 ** (t - 1)) / (1 - beta2 ** t)
        u, v, r, s = (state[k] for k in FACTORS)
        m, n = hfac_matrix(tuple(p.shape))
        g = p.grad.reshape(m, n).to(u.dtype)  # a copy only for half-precision parameters
        g_row, g_col = g.mean(dim=1), g.mean(dim=0)
        g2 = torch.square(g).add_(group["eps"])
        r.mul_(b2).add_(g2.sum(dim=1), alpha=1 - b2)
        s.mul_(b2).add_(g2.sum(dim=0), alpha=1 - b2)
        del g2
        # φ and ψ: the updated factors minus this gradient's row / column means
        u.mul_(b1).add_(g_row, alpha=1 - b1)
        v.mul_(b1).add_(g_col, alpha=1 - b1)
        phi = (u - g_row).mul_(b1).div_(torch.sqrt(r / n))
        psi = (v - g_col).mul_(b1).div_(torch.sqrt(s / m))
        # G / √V̂ with V̂ = r sᵀ / Σr, one full-size tensor, then clipped by its RMS
        update = g * torch.rsqrt(r).unsqueeze(1)
        update.mul_(torch.rsqrt(s).unsqueeze(0)).mul_(math.sqrt(float(r.sum())))
        rms = float(torch.linalg.vector_norm(update)) / math.sqrt(update.numel())
        update.div_(max(1.0, rms / group["clip_threshold"]))
        update.add_(phi.unsqueeze(1), alpha=0.5).add_(psi.unsqueeze(0), alpha=0.5)
        lr = group["lr"]
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        p.add_(update.view(p.shape), alpha=-lr)


__all__ = ["HFac"]
