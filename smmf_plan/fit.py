"""Does a training step fit a device, how much is left, and how large a batch would fit?

The fit logic sees one thing per optimizer: ``total_at(batch) -> bytes``, the memory a training
step needs at that batch size. It must be non-decreasing in the batch size (more samples never need
less memory); :func:`affine` builds one from fixed + per-sample bytes, the shape the memory
estimate has (weights, gradients, state and runtime are fixed; activations grow with the batch).

Conventions: ``headroom_bytes = usable_bytes - total_at(batch_size)`` (negative when it does not
fit); ``max_batch_size`` is 0 when not even batch 1 fits, and is ``None`` in JSON documents planned
without a device. The largest batch is searched up to :data:`MAX_BATCH`; a fit that still holds
there is reported as ``MAX_BATCH`` with ``capped=True``. With gradient accumulation the batch is
the micro-batch: the largest micro-batch is searched, the effective batch is it times the
micro-steps.

Two memories: ``total_at`` is what the device holds; a recipe that offloads the optimizer also
needs ``host_bytes`` on the host (fixed: they do not grow with the batch), checked against the
device's host memory. A step fits when both do.

An incomplete estimate (activations unknown: weights without an architecture) has lower bounds
only: it does not fit when even the lower bound is over (``fits`` False), and otherwise whether it
fits is not known (``fits`` None); its headroom and largest batch are not known either (None).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from .allocators.models import default_for
from .breakdown import StepMemory
from .devices import Device
from .errors import PlanError
from .units import format_bytes

TotalAt = Callable[[int], int]

#: the largest batch size searched for, and the largest one a plan accepts (1,048,576 samples:
#: beyond any single training step; a larger number is a typo, not a plan).
MAX_BATCH = 1 << 20


@dataclass(frozen=True)
class Fit:
    """One optimizer's verdict on one device at one batch size."""

    #: None: not known (an incomplete estimate whose lower bound fits).
    fits: bool | None
    #: usable minus needed on the device; negative when it does not fit; None when not known.
    headroom_bytes: int | None
    #: largest (micro-)batch that fits (0: not even batch 1); ``MAX_BATCH`` with ``capped``; None
    #: when not known.
    max_batch_size: int | None
    #: the device's bytes at ``batch_size`` (a lower bound when not ``complete``).
    total_bytes: int
    usable_bytes: int
    batch_size: int
    capped: bool = False
    #: offload: bytes on the host and the host memory they are checked against.
    host_bytes: int = 0
    host_usable_bytes: int | None = None
    #: False when the estimate's totals are lower bounds.
    complete: bool = True

    @property
    def host_fits(self) -> bool | None:
        """Whether the host parts fit the host memory (None without host parts)."""
        if not self.host_bytes:
            return None
        return self.host_usable_bytes is not None and self.host_bytes <= self.host_usable_bytes

    def to_dict(self) -> dict:
        """The per-optimizer ``fits`` / ``headroom_bytes`` / ``max_batch_size`` JSON fields, and
        ``host_fits`` / ``host_headroom_bytes`` where the step keeps bytes on the host."""
        d = {"fits": self.fits, "headroom_bytes": self.headroom_bytes,
             "max_batch_size": self.max_batch_size}
        if self.capped:
            d["max_batch_size_capped"] = True
        if self.host_bytes:
            d["host_fits"] = self.host_fits
            d["host_headroom_bytes"] = (None if self.host_usable_bytes is None
                                        else self.host_usable_bytes - self.host_bytes)
        return d

    def max_batch_text(self) -> str:
        if self.max_batch_size is None:
            return "?"
        return f"≥{self.max_batch_size:,}" if self.capped else f"{self.max_batch_size:,}"


#: the same fields when no device was given.
NO_DEVICE = {"fits": None, "headroom_bytes": None, "max_batch_size": None}


def check_batch_size(value: object, what: str = "--batch-size") -> int:
    """``value`` as a batch size in 1..:data:`MAX_BATCH`; :class:`PlanError` naming the value
    otherwise."""
    if isinstance(value, bool):
        raise PlanError(f"{what} {value!r} is not a whole number: give a batch size ≥ 1")
    if not isinstance(value, int):
        try:
            value = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise PlanError(f"{what} {value!r} is not a whole number: give a batch size ≥ 1") from None
    if value < 1:
        raise PlanError(f"{what} {value} is not a batch size: give a whole number ≥ 1")
    if value > MAX_BATCH:
        raise PlanError(f"{what} {value:,} is larger than smmf-plan plans (at most {MAX_BATCH:,} "
                        "samples per step): give a smaller batch size")
    return value


def affine(fixed_bytes: int, per_sample_bytes: int) -> TotalAt:
    """``total_at(b) = fixed_bytes + b * per_sample_bytes``."""
    if fixed_bytes < 0 or per_sample_bytes < 0:
        raise ValueError("fixed and per-sample bytes must not be negative")
    return lambda batch: fixed_bytes + batch * per_sample_bytes


def max_batch(total_at: TotalAt, usable_bytes: int, cap: int = MAX_BATCH) -> tuple[int, bool]:
    """(largest b in 1..cap with ``total_at(b) <= usable_bytes``, whether it hit ``cap``).

    Exponential then binary search: about 2·log2(answer) calls; assumes ``total_at`` is
    non-decreasing."""
    if cap < 1:
        raise ValueError("cap must be ≥ 1")
    if total_at(1) > usable_bytes:
        return 0, False
    lo, hi = 1, 2
    while True:  # lo fits; find a hi that does not
        if hi >= cap:
            if total_at(cap) <= usable_bytes:
                return cap, True
            hi = cap
            break
        if total_at(hi) > usable_bytes:
            break
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total_at(mid) <= usable_bytes:
            lo = mid
        else:
            hi = mid
    return lo, False


def fit(total_at: TotalAt, usable_bytes: int, batch_size: int, *, cap: int = MAX_BATCH,
        host_bytes: int = 0, host_usable_bytes: int | None = None, complete: bool = True) -> Fit:
    """Verdict for one optimizer: fits at ``batch_size``? headroom? largest batch that fits?
    ``host_bytes`` (offload) must fit ``host_usable_bytes`` too; ``complete=False``: the totals are
    lower bounds (see the module docstring)."""
    batch_size = check_batch_size(batch_size)
    if isinstance(usable_bytes, bool) or not isinstance(usable_bytes, int) or usable_bytes < 0:
        raise PlanError(f"usable memory {usable_bytes!r} must be a whole number of bytes ≥ 0")
    total = int(total_at(batch_size))
    host_ok = not host_bytes or (host_usable_bytes is not None and host_bytes <= host_usable_bytes)
    common = dict(total_bytes=total, usable_bytes=usable_bytes, batch_size=batch_size,
                  host_bytes=host_bytes, host_usable_bytes=host_usable_bytes, complete=complete)
    if not complete:
        over = total > usable_bytes or not host_ok
        return Fit(fits=False if over else None, headroom_bytes=None, max_batch_size=None, **common)
    largest, capped = max_batch(lambda b: int(total_at(b)), usable_bytes, cap)
    if not host_ok:
        largest, capped = 0, False
    return Fit(fits=total <= usable_bytes and host_ok, headroom_bytes=usable_bytes - total,
               max_batch_size=largest, capped=capped, **common)


def smallest_device(candidates: Iterable[tuple[Device, Fit]], *, require_pytorch: bool = True
                    ) -> Device | None:
    """The device with the least usable memory among those the step fits; with
    ``require_pytorch`` devices where PyTorch training does not run at all are skipped."""
    best: Device | None = None
    for device, f in candidates:
        if not f.fits or (require_pytorch and not device.runs_pytorch):
            continue
        if best is None or device.usable_bytes < best.usable_bytes:
            best = device
    return best


# --------------------------------------------------------------------------- one-line verdict

def _upto(f: Fit) -> str:
    n = f.max_batch_size
    return f" (fits up to batch {f.max_batch_text()})" if n and n < f.batch_size else ""


def _largest(f: Fit) -> str:
    """``, largest batch 16`` (nothing when unknown: max_batch_size 0 on a fitting step)."""
    return f", largest batch {f.max_batch_text()}" if f.fits and f.max_batch_size else ""


def _host(f: Fit) -> str:
    """``, 30 GiB on the host (of 256 GiB)`` for a step that keeps bytes on the host."""
    if not f.host_bytes:
        return ""
    of = "?" if f.host_usable_bytes is None else format_bytes(f.host_usable_bytes, 0)
    over = "" if f.host_fits else ": too much"
    return f", {format_bytes(f.host_bytes, 0)} on the host (of {of}{over})"


def _paren(clause: str) -> str:
    return f" ({clause[2:]})" if clause else ""


def _pytorch_caveat(device: Device, any_fits: bool) -> str:
    why = f" ({device.pytorch_reason})" if device.pytorch_reason else ""
    if device.pytorch_training == "no":
        if any_fits:
            return f" — fits in memory, but PyTorch does not run on {device.id}{why}"
        return f" — and PyTorch does not run on {device.id} anyway{why}"
    if device.pytorch_training == "marginal":
        return f" — PyTorch training on {device.id} is marginal{why}"
    return ""


def _names(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _incomplete(device: Device, order: Sequence[tuple[str, Fit]], batch: int) -> str:
    """The verdict when the totals are lower bounds (activations not known)."""
    where = device.describe()
    needs = ", ".join(f"{o} ≥ {format_bytes(f.total_bytes, 0)}" for o, f in order)
    no = [o for o, f in order if f.fits is False]
    maybe = [o for o, f in order if f.fits is None]
    line = f"Activations not known (no architecture for these weights): at batch {batch} {needs}"
    if not maybe:
        line += f"; {'it does' if len(no) == 1 else 'none'} not fit {where} even so"
    elif no:
        line += (f"; {_names(no)} {'does' if len(no) == 1 else 'do'} not fit {where} even so; "
                 f"whether {_names(maybe)} {'fits' if len(maybe) == 1 else 'fit'} is not known")
    else:
        line += f"; whether {'it fits' if len(maybe) == 1 else 'they fit'} {where} is not known"
    return line + _pytorch_caveat(device, False)


def recommendation(device: Device, fits: Mapping[str, Fit], *, batch_known: bool = True,
                   would_fit: Mapping | None = None) -> str:
    """One line: which optimizers fit ``device``, at what cost, and what the others need; for an
    incomplete estimate (``Fit.complete`` False) what is known: lower bounds.
    ``batch_known=False`` (totals do not grow with the batch) leaves out the largest-batch
    clauses. ``would_fit`` (optimizer id → :class:`~smmf_plan.alternatives.WouldFit`) adds what
    would make the others fit: ``; to fit: adam --grad-checkpointing``.

    ``Only smmf fits rpi-zero (383 MiB usable): 318 MiB at batch 1; adam needs 698 MiB — fits in
    memory, but PyTorch does not run on rpi-zero (ARMv6: no PyTorch wheels)``"""
    if not fits:
        return f"No optimizer to check against {device.describe()}."
    if not batch_known:
        fits = {o: dataclasses.replace(f, max_batch_size=0, capped=False) for o, f in fits.items()}
    order: Sequence[tuple[str, Fit]] = sorted(fits.items(), key=lambda kv: kv[1].total_bytes)
    batch = order[0][1].batch_size
    if not all(f.complete for _, f in order):
        return _incomplete(device, order, batch)
    yes = [(o, f) for o, f in order if f.fits]
    no = [(o, f) for o, f in order if not f.fits]
    where = device.describe()
    if len(order) == 1:
        o, f = order[0]
        if f.fits:
            line = (f"{o} fits {where}: {format_bytes(f.total_bytes, 0)} at batch {batch}, "
                    f"{format_bytes(f.headroom_bytes, 0)} to spare" + _largest(f) + _host(f))
        elif f.headroom_bytes >= 0:  # the device would do; the host does not
            line = (f"{o} does not fit {where}: {format_bytes(f.total_bytes, 0)} at batch {batch} "
                    f"on the device" + _host(f))
        else:
            line = (f"{o} does not fit {where}: needs {format_bytes(f.total_bytes, 0)} at batch "
                    f"{batch}, {format_bytes(-f.headroom_bytes, 0)} over{_upto(f)}" + _host(f))
    elif not no:
        (lo, flo), (hi, fhi) = order[0], order[-1]
        line = (f"All {len(order)} optimizers fit {where} at batch {batch}: {lo} needs least, "
                f"{format_bytes(flo.total_bytes, 0)}{_paren(_largest(flo) + _host(flo))}; {hi} needs "
                f"most, {format_bytes(fhi.total_bytes, 0)}{_paren(_largest(fhi) + _host(fhi))}")
    elif not yes:
        o, f = order[0]
        rest = ", ".join(f"{p} {format_bytes(g.total_bytes, 0)}{_upto(g)}" for p, g in order[1:])
        over = (f" ({format_bytes(-f.headroom_bytes, 0)} over)" if f.headroom_bytes < 0
                else _paren(_host(f)))
        line = (f"No optimizer fits {where} at batch {batch}: {o} needs least, "
                f"{format_bytes(f.total_bytes, 0)}{over}{_upto(f)}" + (f"; {rest}" if rest else ""))
    else:
        names = ", ".join(o for o, _ in yes)
        if len(yes) == 1:
            needs = f"{format_bytes(yes[0][1].total_bytes, 0)} at batch {batch}"
        else:
            needs = (", ".join(f"{o} {format_bytes(f.total_bytes, 0)}" for o, f in yes)
                     + f" at batch {batch}")
        others = ", ".join(f"{o} needs {format_bytes(f.total_bytes, 0)}{_upto(f)}{_host(f)}"
                           for o, f in no)
        line = f"Only {names} fit{'s' if len(yes) == 1 else ''} {where}: {needs}; {others}"
    line += _pytorch_caveat(device, bool(yes))
    found = [w for o, _ in no for w in [(would_fit or {}).get(o)] if w is not None and w.found]
    if found:
        line += "; to fit: " + ", ".join(f"{w.optimizer} {w.found.args}" for w in found)
    return line


# --------------------------------------------------------------------------- many devices

def judge(step: StepMemory, device: Device, batch_size: int) -> Fit:
    """One optimizer's step on ``device`` (the step planned with ``device.allocator``): its device
    bytes against the usable memory, its host bytes (offload) against the host memory."""
    return fit(step.total_at, device.usable_bytes, batch_size, host_bytes=step.host_bytes,
               host_usable_bytes=device.host_memory, complete=step.complete)


def grid(steps_by_allocator: Mapping[str, Mapping[str, StepMemory]], devices: Sequence[Device],
         batch_size: int, allocator_of: Callable[[Device], str] | None = None
         ) -> dict[str, dict[str, Fit]]:
    """device id → optimizer id → :class:`Fit`, each device judged with the totals of its
    allocator model (``allocator_of(device)``; default: the device's own,
    :func:`smmf_plan.allocators.models.default_for`)."""
    if allocator_of is None:
        def allocator_of(d: Device) -> str:
            return default_for(d).id
    out: dict[str, dict[str, Fit]] = {}
    for device in devices:
        steps = steps_by_allocator[allocator_of(device)]
        out[device.id] = {oid: judge(s, device, batch_size) for oid, s in steps.items()}
    return out
