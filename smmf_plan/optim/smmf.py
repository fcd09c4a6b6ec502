"""SMMF — Square-Matricized Momentum Factorization (Park & Lee, AAAI 2025), as a torch optimizer.

Per parameter of ``N`` elements, with ``(n̂, m̂) = square_matricize(shape)`` (Algorithm 2), SMMF keeps
rank-1 non-negative factors of ``|M|`` and ``V`` plus the sign of ``M`` and runs, every step,
decompression → update → compression (Algorithms 1, 3, 4) with the schedules of Algorithm 8,
``β1,t = β·λ^(t-1)`` and ``β2,t = 1 − t^γ``. The state is exactly what
:func:`smmf_plan.optimizers.smmf.smmf_state` describes (the planner's definition), allocated once.

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

Kernels (chosen like ``torch.optim.Adam``'s ``foreach``/``fused``, by the ``fused`` argument):

* **fused CPU** (:mod:`smmf_plan.optim._cpp`, C++ built on first use): fp32, bf16 and fp16 CPU
  parameters, one sweep per parameter (~12.25 bytes per fp32 element), row and column sums
  accumulated in double;
* **fused CUDA** (:mod:`smmf_plan.optim._triton`, Triton): fp32, bf16 and fp16 CUDA parameters,
  no host synchronisation;
* **eager** (:mod:`smmf_plan.optim._kernels`, plain PyTorch operators): everything else (fp64,
  other devices, no compiler) and ``fused=False``. Parameters of one group that share
  ``(n̂, m̂)``, dtype, device and step are updated together; small ones are stacked into one batch.

``fused=None`` (default) takes the fused kernel where one applies and can be built, else the eager
one; ``fused=True`` requires it (``RuntimeError`` naming what is missing, also for DTensor
parameters under FSDP2, whose exact sharded step is eager); ``fused=False`` never uses it. The environment variable ``SMMF_PLAN_KERNEL`` (``auto``, ``eager`` or ``fused``) overrides
the automatic choice (``fused=None``) only. Floating-point operations are ordered differently from
the code, so trajectories agree with it to rounding rather than bit for bit; every kernel is
checked against the reference run in float64 (``tests/test_optim_smmf_accuracy.py``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

import torch

from . import _cpp, _triton
from . import sharded as _sharded
from ._kernels import Hyper, Workspace, dense_update, factorized_update, is_fake
from ._layout import SIGN_STORAGES, is_factorized, smmf_state, square_matricize

WEIGHT_DECAY_MODES = ("adamw", "adam")
#: parameter dtypes the fused kernels take (fp64 and others use the eager kernels)
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_REAL_FLOATS = frozenset(FUSED_DTYPES + (torch.float64,))
KERNEL_ENV = "SMMF_PLAN_KERNEL"
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
        fused: ``None`` (default) uses the fused kernel where one applies (fp32/bf16/fp16 on CPU
            with a C++ compiler, or on CUDA with Triton), else the eager one; ``True`` requires
            it (``RuntimeError`` otherwise); ``False`` always uses the eager PyTorch kernels.
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
        fused: Optional[bool] = None,
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
        _check(fused is None or isinstance(fused, bool), f"fused must be None, True or False, got {fused!r}")
        env = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
        env = "fused" if env == "cpp" else env  # the spelling of smmf-plan 0.1
        _check(env in ("auto", "eager", "fused"),
               f"{KERNEL_ENV} must be auto, eager or fused, got {env!r}")
        if beta is None and growth_rate is not None and growth_rate != _DEFAULT_GROWTH:
            warnings.warn("SMMF: beta=None disables the first moment, so growth_rate is unused",
                          UserWarning, stacklevel=2)
        defaults = dict(lr=lr, beta=beta, eps=eps, weight_decay=weight_decay, decay_rate=decay_rate,
                        growth_rate=growth_rate, vector_reshape=vector_reshape,
                        weight_decay_mode=weight_decay_mode, fused=fused)
        super().__init__(params, defaults)
        self.sign = sign
        self._env_fused = {"auto": None, "eager": False, "fused": True}[env]
        #: scratch buffers kept between steps (not state: never saved; see :meth:`workspace_bytes`);
        #: a separate set for steps on fake tensors, so that they never reach a real step
        self._workspaces = {False: Workspace(), True: Workspace()}
        self._kernel_cache: dict[tuple, str] = {}
        for group in self.param_groups:
            if group["fused"]:
                for p in group["params"]:
                    self._kernel(group, p)  # fused=True: fail now, not at the first step
        if any(g["fused"] for g in self.param_groups) and _sharded.applies(self):
            raise RuntimeError("SMMF(fused=True): DTensor (FSDP2) parameters take the exact sharded "
                               "step, which has no fused kernel; pass fused=None or fused=False")
        _sharded.install(self)  # FSDP2: checkpoints hold DTensor state (see .sharded)

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

    # ------------------------------------------------------------------ kernels
    #: tests only: run every factorized parameter through this kernel (the Triton kernel on CPU
    #: tensors under ``TRITON_INTERPRET=1``)
    _force_kernel: Optional[str] = None

    def _kernel(self, group: dict, p: torch.Tensor) -> str:
        """``"cpu"``, ``"triton"`` or ``"eager"`` for a factorized parameter like ``p`` in ``group``."""
        if self._force_kernel is not None:
            return self._force_kernel
        want = group["fused"] if group["fused"] is not None else self._env_fused
        key = (want, p.device.type, p.dtype)
        kernel = self._kernel_cache.get(key)
        if kernel is None:
            kernel, why = ("eager", None) if want is False else _fused_kernel(p.device.type, p.dtype)
            if kernel == "eager" and want:
                raise RuntimeError(f"SMMF(fused=True): no fused kernel for {why}; pass fused=False "
                                   "to use the eager kernels")
            if why and p.device.type == "cpu" and p.dtype in FUSED_DTYPES:
                warnings.warn(f"SMMF: the fused CPU kernel is unavailable ({why}); using the eager "
                              "kernels, which are slower", UserWarning, stacklevel=4)
            self._kernel_cache[key] = kernel
        return kernel

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if _sharded.applies(self):  # FSDP2/DTensor parameters: the exact sharded step (.sharded)
            _sharded.step(self)
            return loss
        for group in self.param_groups:
            self._group_step(group)
        return loss

    def _group_step(self, group: dict) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        coupled = wd if wd != 0.0 and group["weight_decay_mode"] == "adam" else 0.0
        decay = 1.0 - lr * wd if wd != 0.0 and group["weight_decay_mode"] == "adamw" else 1.0
        fused: dict[tuple, list] = defaultdict(list)
        eager: list[tuple[torch.Tensor, torch.Tensor, int, tuple]] = []
        all_state = self.state
        vector_reshape = group["vector_reshape"]
        kernels: dict[tuple, str] = {}
        fake = None
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse or p.dtype not in _REAL_FLOATS:
                self._check_grad(p, g)
            state = all_state[p]
            if len(state) == 0:
                state = self._init_state(p, group)
            t = state["step"] = state["step"] + 1
            shape = _geometry(p.shape, vector_reshape)
            if shape is None:
                eager.append((p, g, t, shape))
            elif shape[0] * shape[1]:
                where = (p.device, p.dtype)
                kernel = kernels.get(where)
                if kernel is None:
                    kernel = kernels[where] = self._kernel(group, p)
                if kernel == "eager":
                    eager.append((p, g, t, shape))
                else:
                    if fake is None:  # a group is all fake (FakeTensorMode) or all real
                        fake = is_fake(p)
                    fused[(kernel, where, t, fake)].append((p, g, shape))
        for (kernel, _, t, is_fake_), items in fused.items():
            self._fused_step(kernel, items, group, self._hyper(group, t), decay, coupled, is_fake_)
        if eager:
            self._eager_step(eager, group, wd, coupled != 0.0, decay)

    @staticmethod
    def _hyper(group: dict, t: int) -> Hyper:
        beta, growth = group["beta"], group["growth_rate"]
        beta1 = None if beta is None else beta * (1.0 if growth is None else growth ** (t - 1))
        return Hyper(lr=group["lr"], eps=group["eps"], beta1=beta1, beta2=1.0 - t ** group["decay_rate"])

    def _fused_step(self, kernel: str, items: list, group: dict, h: Hyper, decay: float,
                    coupled: float, fake: bool) -> None:
        params = [p if p.is_contiguous() else p.contiguous() for p, _, _ in items]
        grads = [(g if g.dtype == p.dtype else g.to(p.dtype)).contiguous() for (_, g, _), p in zip(items, params)]
        states = [self.state[p] for p, _, _ in items]
        first = h.beta1 is not None
        run = _cpp.step if kernel == "cpu" else _triton.step
        run(params, grads, states, [shape for _, _, shape in items], first=first,
            packed=self.sign == "packed", beta1=h.beta1 if first else 0.0, beta2=h.beta2, lr=h.lr,
            eps=h.eps, decay=decay, coupled=coupled, ws=self._workspaces[fake])
        for (p, _, _), work in zip(items, params):
            if work is not p:
                p.copy_(work)

    def _eager_step(self, items: list, group: dict, wd: float, coupled: bool, decay: float) -> None:
        buckets: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        to_decay: list[torch.Tensor] = []
        for p, g, t, shape in items:
            if coupled:
                g = g.add(p, alpha=wd)
            if decay != 1.0:
                to_decay.append(p)
            if shape is not None:
                stack = shape[0] * shape[1] <= STACK_MAX_NUMEL
                key = ("f", shape, p.dtype, p.device, t, stack or id(p), is_fake(p))
            else:
                key = ("d", None, p.dtype, p.device, t, None, is_fake(p))
            buckets[key].append((p, g))
        if to_decay:
            torch._foreach_mul_(to_decay, decay)
        for key, pairs in buckets.items():
            kind, shape, _, _, t, _, fake = key
            h = self._hyper(group, t)
            params = [p for p, _ in pairs]
            grads = [g for _, g in pairs]
            states = [self.state[p] for p in params]
            if kind == "f":
                first = h.beta1 is not None
                factorized_update(
                    params, grads,
                    [s["row_m"] for s in states] if first else None,
                    [s["col_m"] for s in states] if first else None,
                    [s["sign"] for s in states] if first else None,
                    [s["row_v"] for s in states], [s["col_v"] for s in states],
                    shape, packed=self.sign == "packed", h=h, ws=self._workspaces[fake],
                )
            else:
                dense_update(params, grads,
                             [s["exp_avg"] for s in states] if h.beta1 is not None else None,
                             [s["exp_avg_sq"] for s in states], h)

    def workspace_bytes(self) -> int:
        """Bytes of scratch memory this optimizer keeps between steps (not part of the state)."""
        return self._workspaces[False].nbytes()

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
            entry = _sharded.local_entry(self, p, entry)  # DTensor (DCP) forms -> this rank's
            self.state[p] = {
                k: (v.detach().to(device=p.device, copy=True) if isinstance(v, torch.Tensor) else v)
                for k, v in entry.items()
            }


_GEOMETRY: dict[tuple, Optional[tuple[int, int]]] = {}


def _geometry(shape: torch.Size, vector_reshape: bool) -> Optional[tuple[int, int]]:
    """``(n̂, m̂)`` of a factorized parameter, ``None`` for the dense path (cached: every step asks)."""
    key = (shape, vector_reshape)
    try:
        return _GEOMETRY[key]
    except KeyError:
        dims = tuple(shape)
        out = _GEOMETRY[key] = square_matricize(dims) if is_factorized(dims, vector_reshape) else None
        return out


def _fused_kernel(device_type: str, dtype: torch.dtype) -> tuple[str, Optional[str]]:
    """The fused kernel for parameters on ``device_type`` of ``dtype``, or ``("eager", why not)``."""
    if dtype not in FUSED_DTYPES:
        return "eager", f"{str(dtype).removeprefix('torch.')} parameters (fused kernels take fp32, bf16, fp16)"
    if device_type == "cpu":
        why = _cpp.load_error()
        return ("cpu", None) if why is None else ("eager", f"CPU parameters: {why}")
    if device_type == "cuda":
        why = _triton.load_error()
        return ("triton", None) if why is None else ("eager", f"CUDA parameters: {why}")
    return "eager", f"{device_type} parameters (fused kernels run on CPU and CUDA)"
