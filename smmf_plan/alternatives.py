"""What would fit: for an optimizer whose training step does not fit a device, the smallest change
to the run that would, found by planning each candidate run for real (the same estimate, trace and
allocator model as the verdict), never by a rule of thumb.

The changes, from the smallest to the largest (:data:`ORDER`; the first that fits is named):

1. ``batch`` - a smaller batch (the largest that fits; same model, same step, fewer samples);
2. ``grad-accum`` - micro-batch 1 with gradient accumulation over the planned batch (the same
   effective batch; more, smaller steps);
3. ``grad-checkpointing`` - recompute activations in backward (same results, ~1/3 more compute);
4. ``amp-bf16`` - bf16 autocast with fp32 master weights (activations in bf16; standard practice);
5. ``smmf`` - the SMMF optimizer instead (factorized state; a different optimizer);
6. ``offload`` - the optimizer state and its step on the GPU's host (torchao's
   ``CPUOffloadOptimizer``; GPUs with a host of their own only; slower steps);
7. ``bf16`` - pure bf16 training (weights, gradients and state in bf16: the numerics change);
8. ``lora`` - rank-8 LoRA adapters on the attention projections PEFT targets by default, the base
   frozen (a different training problem: only adapters learn);
9. ``qlora`` - the same adapters on an NF4 bitsandbytes base (QLoRA; the base's numerics change);
10. ``combined`` - the changes 2-9 that apply, stacked in that order, the first stack that fits;
11. ``device`` - the smallest catalog device that runs PyTorch and fits the run unchanged.

A change that does not apply (checkpointing already on, no switch for it in the model, LoRA on a
model without attention projections, SMMF for SMMF, accumulation at batch 1, offload on a device
without a host of its own) is skipped and reported as such; on a device PyTorch does not train on
(a Raspberry Pi Zero) changes 2-10 are skipped, since no change to the run trains there. Each
candidate is judged on the same device under its allocator model at the planned batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from .allocators import models
from .errors import PlanError
from .fit import Fit, smallest_device
from .fit import judge as judge_one
from .memory import estimate
from .units import format_bytes

#: the changes in the order they are tried (smallest first); see the module docstring.
ORDER = ("batch", "grad-accum", "grad-checkpointing", "amp-bf16", "smmf", "offload", "bf16", "lora",
         "qlora", "combined", "device")

#: LoRA targets by the module names a model has: PEFT's default target modules per architecture
#: (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``: llama/mistral q_proj,v_proj; gpt2
#: c_attn; bert/roberta/vit query,value; t5 q,v; timm ViTs qkv), first match wins.
LORA_TARGETS = (("q_proj", "v_proj"), ("c_attn",), ("query", "value"), ("q", "v"), ("qkv",))
#: PEFT's default rank.
LORA_RANK = 8


@dataclass(frozen=True)
class Tried:
    """One candidate change and what planning it gave for one optimizer."""

    change: str
    #: the command-line options that make the run (``--grad-checkpointing``, ``-b 4``, ``-d t4``).
    args: str
    total_bytes: int | None = None
    fits: bool | None = None
    max_batch_size: int | None = None
    #: why the change was not planned (it does not apply, or the model cannot be traced so).
    skipped: str | None = None

    def to_dict(self) -> dict:
        d = {"change": self.change, "args": self.args, "total_bytes": self.total_bytes,
             "fits": self.fits}
        if self.max_batch_size is not None:
            d["max_batch_size"] = self.max_batch_size
        if self.skipped:
            d["skipped"] = self.skipped
        return d


@dataclass
class WouldFit:
    """The smallest change that makes one optimizer's step fit (``found`` None: none of them)."""

    optimizer: str
    found: Tried | None
    #: the device the change is judged on (another one for the ``device`` change).
    device: str
    headroom_bytes: int | None = None
    tried: list[Tried] = field(default_factory=list)

    def to_dict(self) -> dict:
        f = self.found
        return {
            "change": f.change if f else None,
            "args": f.args if f else None,
            "device": self.device,
            "total_bytes": f.total_bytes if f else None,
            "headroom_bytes": self.headroom_bytes,
            "max_batch_size": f.max_batch_size if f else None,
            "tried": [t.to_dict() for t in self.tried],
        }

    def text(self) -> str:
        """``adam: --grad-checkpointing (1.4 GiB, 120 MiB to spare)``, or that nothing does."""
        if self.found is None:
            return f"{self.optimizer}: no single change or stack of them fits"
        return (f"{self.optimizer}: {self.found.args} ({format_bytes(self.found.total_bytes, 0)}, "
                f"{format_bytes(self.headroom_bytes, 0)} to spare)")


def lora_targets(param_names: Sequence[str]) -> tuple[str, ...] | None:
    """PEFT's default targets among the model's 2-D weights' module names, or None."""
    leaves = {n[: -len(".weight")].rsplit(".", 1)[-1] for n in param_names if n.endswith(".weight")}
    for targets in LORA_TARGETS:
        if all(t in leaves for t in targets):
            return targets
    return None


# --------------------------------------------------------------------------- the search

#: ``plan(model_options, step_options) -> {optimizer id: StepMemory}`` under the device's model.
Planner = Callable[[Any, Any], Mapping[str, Any]]


def _candidates(m, step, spec, device=None) -> list[tuple[str, str, Any, Any, str | None]]:
    """(change, args, model options, step options, why skipped) for changes 2-9, in order."""
    out = []
    effective = step.batch * (step.grad_accum or 1)
    if step.batch == 1:
        out.append(("grad-accum", "--grad-accum", m, step, "batch 1: nothing to accumulate"))
    elif step.offload == "optimizer+grads":
        out.append(("grad-accum", "--grad-accum", m, step,
                    "--offload optimizer+grads frees each gradient: it cannot accumulate"))
    else:
        out.append(("grad-accum", f"-b 1 --grad-accum {effective}", m,
                    replace(step, batch_size=1, grad_accum=effective), None))
    if step.grad_checkpointing:
        out.append(("grad-checkpointing", "--grad-checkpointing", m, step, "already on"))
    else:
        out.append(("grad-checkpointing", "--grad-checkpointing", m,
                    replace(step, grad_checkpointing=True), None))
    half = m.dtype in ("bfloat16", "float16")
    if step.amp or half:
        out.append(("amp-bf16", "--amp bf16", m, step, "mixed or low precision already"))
    else:
        out.append(("amp-bf16", "--amp bf16", m, replace(step, amp="bf16"), None))
    out.append(("smmf", "-o smmf", replace(m, optimizers=("smmf",)), step, None))
    no_host = None
    if device is not None:
        try:
            device.check_offload("optimizer")
        except PlanError:
            no_host = f"{device.id} has no host memory of its own"
    if step.offload is not None:
        out.append(("offload", "--offload optimizer", m, step, "offload already"))
    elif no_host:
        out.append(("offload", "--offload optimizer", m, step, no_host))
    else:
        out.append(("offload", "--offload optimizer", m, replace(step, offload="optimizer"), None))
    if step.amp or half:
        out.append(("bf16", "--dtype bf16", m, step,
                    "with --amp the master weights stay fp32" if step.amp else "already half"))
    else:
        out.append(("bf16", "--dtype bf16", replace(m, dtype="bfloat16"), step, None))
    targets = lora_targets([p.name for p in spec.params])
    if m.lora_rank is not None:
        out.append(("lora", "--lora-rank", m, step, "LoRA already"))
    elif targets is None:
        out.append(("lora", "--lora-rank", m, step, "no attention projections PEFT targets"))
    else:
        out.append(("lora", f"--lora-rank {LORA_RANK} --lora-targets {','.join(targets)}",
                    replace(m, lora_rank=LORA_RANK, lora_targets=targets, trainable=(), freeze=()),
                    step, None))
    qargs = "--quantize-base nf4 --lora-rank"
    if m.quantize_base is not None:
        out.append(("qlora", qargs, m, step, "quantized base already"))
    elif m.lora_rank is None and targets is None:
        out.append(("qlora", qargs, m, step, "no attention projections PEFT targets"))
    else:
        rank, tgts = (m.lora_rank, m.lora_targets) if m.lora_rank is not None else (LORA_RANK, targets)
        args = "--quantize-base nf4" + ("" if m.lora_rank is not None else
                                        f" --lora-rank {rank} --lora-targets {','.join(tgts)}")
        out.append(("qlora", args, replace(m, lora_rank=rank, lora_targets=tgts, trainable=(),
                                           freeze=(), quantize_base="nf4"), step, None))
    return out


def would_fit(m, step, device, fits: Mapping[str, Fit], steps: Mapping[str, Any], spec,
              plan: Planner, *, devices: Sequence = (), plan_for: Callable[[Any], Planner] | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, WouldFit]:
    """For every optimizer of ``fits`` that does not fit ``device``, the smallest change that does.

    ``m``/``step``: the run as planned (:class:`~smmf_plan.options.ModelOptions` /
    :class:`~smmf_plan.options.StepOptions`); ``steps``: its :class:`~smmf_plan.breakdown.StepMemory`
    per optimizer; ``spec``: its model spec; ``plan(m, step)`` estimates another run on
    ``device``; ``devices`` and ``plan_for(device)`` (a planner under that device's allocator
    model) find the smallest device for the run unchanged. ``progress(text)`` hears which change
    is being planned (the options that make it)."""
    batch = step.batch
    say = progress or (lambda text: None)
    # an unknown verdict (activations not known) has no smallest change to search for
    todo = [o for o, f in fits.items() if f.fits is False]
    out = {o: WouldFit(o, None, device.id) for o in todo}
    if not todo:
        return out

    def settle(o: str, t: Tried, headroom: int | None) -> None:
        out[o].tried.append(t)
        if t.fits and out[o].found is None:
            out[o].found, out[o].headroom_bytes = t, headroom

    # 1. a smaller batch: the search the verdict already made
    for o in todo:
        f = fits[o]
        if f.max_batch_size is not None and 0 < f.max_batch_size < batch:
            total = steps[o].total_at(f.max_batch_size)
            settle(o, Tried("batch", f"-b {f.max_batch_size}", total, True, f.max_batch_size),
                   device.usable_bytes - total)
        else:  # not even batch 1 fits
            settle(o, Tried("batch", "-b 1", steps[o].total_at(1), False, 0), None)

    # 2-6. one change each, planned only while an optimizer still needs one; on a device PyTorch
    # does not train on, no change to the run trains there: only another device does
    candidates = _candidates(m, step, spec, device)
    if not device.runs_pytorch:
        why = f" ({device.pytorch_reason})" if device.pytorch_reason else ""
        no_torch = f"PyTorch does not run on {device.id}{why}: only another device trains this run"
        candidates = [(c, a, cm, cs, no_torch) for c, a, cm, cs, _ in candidates]
    for change, args, cm, cstep, skipped in candidates:
        pending = [o for o in todo if out[o].found is None]
        if not pending:
            break
        if skipped is None:
            say(args)
        _try(change, args, cm, cstep, skipped, pending, out, settle, plan, device, batch)

    # 7. the applicable changes stacked, one more at a time
    pending = [o for o in todo if out[o].found is None]
    if pending and sum(c[4] is None for c in candidates) > 1:
        sm, ss, used = m, step, []
        for change, args, cm, cstep, skipped in candidates:
            if skipped is not None:
                continue
            sm, ss = _stack(sm, ss, change, cm, cstep)
            used.append(args)
            if len(used) < 2:
                continue
            say(" ".join(used))
            _try("combined", " ".join(used), sm, ss, None, pending, out, settle, plan, device, batch)
            pending = [o for o in pending if out[o].found is None]
            if not pending:
                break

    # 8. the smallest catalog device for the run unchanged
    pending = [o for o in todo if out[o].found is None]
    if pending and devices and plan_for is not None:
        by_planner: dict[int, Mapping[str, Any]] = {id(plan): steps}  # the run as planned
        verdicts: dict[str, list] = {o: [] for o in pending}
        for d in sorted(devices, key=lambda d: (d.usable_bytes, d.id)):
            if d.id == device.id or d.usable_bytes <= device.usable_bytes:
                continue
            planner = plan_for(d)
            key = id(planner)
            if key not in by_planner:
                say(f"-d {d.id}")
                by_planner[key] = planner(m, step)
            for o in pending:
                s = by_planner[key].get(o)
                if s is not None:
                    verdicts[o].append((d, judge_one(s, d, batch)))
        for o in pending:
            best = smallest_device(verdicts[o])
            if best is None:
                out[o].tried.append(Tried("device", "-d ?", None, False,
                                          skipped="no catalog device fits it"))
                continue
            f = dict((d.id, g) for d, g in verdicts[o])[best.id]
            t = Tried("device", f"-d {best.id}", f.total_bytes, True, f.max_batch_size)
            out[o].tried.append(t)
            out[o].found, out[o].device, out[o].headroom_bytes = t, best.id, f.headroom_bytes
    return out


def _stack(m, step, change, cm, cstep):
    """``m``/``step`` with ``change`` (as ``cm``/``cstep`` make it from the planned run) added."""
    if change == "grad-accum":
        return m, replace(step, batch_size=cstep.batch_size, grad_accum=cstep.grad_accum)
    if change == "grad-checkpointing":
        return m, replace(step, grad_checkpointing=True)
    if change == "amp-bf16":
        return m, replace(step, amp="bf16")
    if change == "smmf":
        return replace(m, optimizers=("smmf",)), step
    if change == "bf16":
        # pure bf16 replaces mixed precision: autocast is redundant on bf16 weights
        return replace(m, dtype="bfloat16"), replace(step, amp=None)
    if change == "offload":
        return m, replace(step, offload="optimizer")
    if change in ("lora", "qlora"):
        return replace(m, lora_rank=cm.lora_rank, lora_targets=cm.lora_targets, trainable=(),
                       freeze=(), quantize_base=cm.quantize_base), step
    return m, step


def _try(change, args, cm, cstep, skipped, todo, out, settle, plan, device, batch) -> None:
    if skipped is not None:
        for o in todo:
            out[o].tried.append(Tried(change, args, skipped=skipped))
        return
    try:
        steps = plan(cm, cstep)
    except PlanError as e:
        for o in todo:
            out[o].tried.append(Tried(change, args, skipped=str(e).splitlines()[0][:200]))
        return
    for o in todo:
        if out[o].found is not None:
            continue
        if change == "smmf" and o.split(":")[0] == "smmf":
            out[o].tried.append(Tried(change, args, skipped="already SMMF"))
            continue
        s = steps.get("smmf" if cm.optimizers == ("smmf",) else o)
        if s is None:
            continue
        f = judge_one(s, device, cstep.batch)  # an accumulating run is judged at its micro-batch
        settle(o, Tried(change, args, f.total_bytes, f.fits, f.max_batch_size), f.headroom_bytes)


# --------------------------------------------------------------------------- planners

def planner(allocator: str) -> Planner:
    """Plan a run (model options, step options) under ``allocator``: its steps per optimizer."""
    def plan(mo, so) -> Mapping[str, Any]:
        # the candidate's recipe (checkpointing, AMP, bf16, LoRA ... as Recipe fields): the model
        # loaded as that recipe stores it, and the step estimated under it
        est = estimate(mo.load(mo.recipe(so)), mo.layouts(), batch_size=so.batch,
                       allocator=allocator, **so.estimate_kwargs(mo))
        return est.steps()
    return plan


def search(m, step, device, fits: Mapping[str, Fit], steps: Mapping[str, Any], spec, *,
           devices: Sequence = (), progress: Callable[[str], None] | None = None
           ) -> dict[str, WouldFit]:
    """:func:`would_fit` with the planners of the command line: ``device`` under the run's
    allocator model, each other device under its own (or ``--allocator`` where it applies)."""
    cache: dict[str, Planner] = {}

    def plan_for(d) -> Planner:
        chosen = models.get_model(step.allocator) if step.allocator else None
        a = chosen.id if chosen in models.applicable(d) else models.default_for(d).id
        if a not in cache:
            cache[a] = planner(a)
        return cache[a]

    return would_fit(m, step, device, fits, steps, spec, plan_for(device), devices=devices,
                     plan_for=plan_for, progress=progress)
