"""Does a training step fit a device, how much is left, and how large a batch would fit?

The fit logic sees one thing per optimizer: ``total_at(batch) -> bytes``, the memory a training
step needs at that batch size. It must be non-decreasing in the batch size (more samples never need
less memory); :func:`affine` builds one from fixed + per-sample bytes, the shape the memory
estimate has (weights, gradients, state and runtime are fixed; activations grow with the batch).

Conventions: ``headroom_bytes = usable_bytes - total_at(batch_size)`` (negative when it does not
fit); ``max_batch_size`` is 0 when not even batch 1 fits, and is ``None`` only in JSON documents
planned without a device. The largest batch is searched up to :data:`MAX_BATCH`; a fit that still
holds there is reported as ``MAX_BATCH`` with ``capped=True`` (no activation model: the total does
not grow with the batch).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

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

    fits: bool
    #: usable minus needed; negative when it does not fit.
    headroom_bytes: int
    #: largest batch that fits (0: not even batch 1); ``MAX_BATCH`` with ``capped``.
    max_batch_size: int
    total_bytes: int
    usable_bytes: int
    batch_size: int
    capped: bool = False

    def to_dict(self) -> dict:
        """The per-optimizer ``fits`` / ``headroom_bytes`` / ``max_batch_size`` JSON fields."""
        d = {"fits": self.fits, "headroom_bytes": self.headroom_bytes,
             "max_batch_size": self.max_batch_size}
        if self.capped:
            d["max_batch_size_capped"] = True
        return d

    def max_batch_text(self) -> str:
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


def fit(total_at: TotalAt, usable_bytes: int, batch_size: int, *, cap: int = MAX_BATCH) -> Fit:
    """Verdict for one optimizer: fits at ``batch_size``? headroom? largest batch that fits?"""
    batch_size = check_batch_size(batch_size)
    if isinstance(usable_bytes, bool) or not isinstance(usable_bytes, int) or usable_bytes < 0:
        raise PlanError(f"usable memory {usable_bytes!r} must be a whole number of bytes ≥ 0")
    total = int(total_at(batch_size))
    largest, capped = max_batch(lambda b: int(total_at(b)), usable_bytes, cap)
    return Fit(fits=total <= usable_bytes, headroom_bytes=usable_bytes - total,
               max_batch_size=largest, total_bytes=total, usable_bytes=usable_bytes,
               batch_size=batch_size, capped=capped)


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
    return f" (fits up to batch {f.max_batch_text()})" if 0 < f.max_batch_size < f.batch_size else ""


def _largest(f: Fit) -> str:
    """``, largest batch 16`` (nothing when unknown: max_batch_size 0 on a fitting step)."""
    return f", largest batch {f.max_batch_text()}" if f.fits and f.max_batch_size else ""


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


def recommendation(device: Device, fits: Mapping[str, Fit], *, batch_known: bool = True,
                   would_fit: Mapping | None = None) -> str:
    """One line: which optimizers fit ``device``, at what cost, and what the others need.
    ``batch_known=False`` (no activation model: totals do not grow with the batch) leaves out the
    largest-batch clauses. ``would_fit`` (optimizer id → :class:`~smmf_plan.alternatives.WouldFit`)
    adds what would make the others fit: ``; to fit: adam --grad-checkpointing``.

    ``Only smmf fits rpi-zero (383 MiB usable): 318 MiB at batch 1; adam needs 698 MiB — fits in
    memory, but PyTorch does not run on rpi-zero (ARMv6: no PyTorch wheels)``"""
    if not fits:
        return f"No optimizer to check against {device.describe()}."
    if not batch_known:
        fits = {o: dataclasses.replace(f, max_batch_size=0, capped=False) for o, f in fits.items()}
    order: Sequence[tuple[str, Fit]] = sorted(fits.items(), key=lambda kv: kv[1].total_bytes)
    batch = order[0][1].batch_size
    yes = [(o, f) for o, f in order if f.fits]
    no = [(o, f) for o, f in order if not f.fits]
    where = device.describe()
    if len(order) == 1:
        o, f = order[0]
        if f.fits:
            line = (f"{o} fits {where}: {format_bytes(f.total_bytes, 0)} at batch {batch}, "
                    f"{format_bytes(f.headroom_bytes, 0)} to spare" + _largest(f))
        else:
            line = (f"{o} does not fit {where}: needs {format_bytes(f.total_bytes, 0)} at batch "
                    f"{batch}, {format_bytes(-f.headroom_bytes, 0)} over{_upto(f)}")
    elif not no:
        (lo, flo), (hi, fhi) = order[0], order[-1]
        line = (f"All {len(order)} optimizers fit {where} at batch {batch}: {lo} needs least, "
                f"{format_bytes(flo.total_bytes, 0)}{_paren(_largest(flo))}; {hi} needs most, "
                f"{format_bytes(fhi.total_bytes, 0)}{_paren(_largest(fhi))}")
    elif not yes:
        o, f = order[0]
        rest = ", ".join(f"{p} {format_bytes(g.total_bytes, 0)}{_upto(g)}" for p, g in order[1:])
        line = (f"No optimizer fits {where} at batch {batch}: {o} needs least, "
                f"{format_bytes(f.total_bytes, 0)} ({format_bytes(-f.headroom_bytes, 0)} over)"
                f"{_upto(f)}" + (f"; {rest}" if rest else ""))
    else:
        names = ", ".join(o for o, _ in yes)
        if len(yes) == 1:
            needs = f"{format_bytes(yes[0][1].total_bytes, 0)} at batch {batch}"
        else:
            needs = (", ".join(f"{o} {format_bytes(f.total_bytes, 0)}" for o, f in yes)
                     + f" at batch {batch}")
        others = ", ".join(f"{o} needs {format_bytes(f.total_bytes, 0)}{_upto(f)}" for o, f in no)
        line = f"Only {names} fit{'s' if len(yes) == 1 else ''} {where}: {needs}; {others}"
    line += _pytorch_caveat(device, bool(yes))
    found = [w for o, _ in no for w in [(would_fit or {}).get(o)] if w is not None and w.found]
    if found:
        line += "; to fit: " + ", ".join(f"{w.optimizer} {w.found.args}" for w in found)
    return line


# --------------------------------------------------------------------------- many devices

def grid(steps_by_allocator: Mapping[str, Mapping[str, StepMemory]], devices: Sequence[Device],
         batch_size: int, allocator_of: Callable[[Device], str] | None = None
         ) -> dict[str, dict[str, Fit]]:
    """device id → optimizer id → :class:`Fit`, each device judged with the totals of its
    allocator model (``allocator_of(device)``; default: the device's own,
    :func:`smmf_plan.allocators.models.default_for`)."""
    if allocator_of is None:
        from .allocators.models import default_for

        def allocator_of(d: Device) -> str:
            return default_for(d).id
    out: dict[str, dict[str, Fit]] = {}
    for device in devices:
        steps = steps_by_allocator[allocator_of(device)]
        out[device.id] = {oid: fit(s.total_at, device.usable_bytes, batch_size)
                          for oid, s in steps.items()}
    return out
