"""``MuonWithAdamW``: ``torch.optim.Muon`` on the targeted 2-D weights and ``torch.optim.AdamW``
on every other parameter, stepped as one optimizer, as Muon's authors run it (Muon is for hidden
matrices only; embeddings, the output head, norms and biases take AdamW).

Both inner optimizers share this optimizer's ``state`` and ``param_groups`` (their group dicts are
this optimizer's), so ``optimizer.state[p]``, learning-rate schedulers and ``state_dict()`` see one
optimizer. Imported only when the registry builds it (it imports torch).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


class MuonWithAdamW(torch.optim.Optimizer):
    """Param groups carry ``use_muon`` (True: Muon's group, else AdamW's); Muon takes ``lr``,
    ``momentum``, ``nesterov``, ``weight_decay``; AdamW ``adamw_lr``, ``adamw_betas``,
    ``adamw_eps``, ``adamw_weight_decay`` and the code-path flags ``foreach`` / ``fused``."""

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, weight_decay: float = 0.0, adamw_lr: float = 3e-4,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float = 0.0, foreach: bool | None = None,
                 fused: bool | None = None) -> None:
        groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
        muon = [dict(g) for g in groups if g.get("use_muon")]
        other = [dict(g) for g in groups if not g.get("use_muon")]
        self._muon = torch.optim.Muon(muon, lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay) if muon else None
        self._adamw = torch.optim.AdamW(other, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps,
                                        weight_decay=adamw_weight_decay, foreach=foreach,
                                        fused=fused) if other else None
        super().__init__(groups, {"lr": lr})
        self._share()

    def _inner(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self._muon, self._adamw) if o is not None]

    def _share(self) -> None:
        groups: list[dict[str, Any]] = []
        for opt in self._inner():
            groups += opt.param_groups
            opt.state = self.state
        self.param_groups = groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._inner():
            opt.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        start = 0
        for opt in self._inner():
            n = len(opt.param_groups)
            opt.param_groups = self.param_groups[start:start + n]
            opt.state = self.state
            start += n
