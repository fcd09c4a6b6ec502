"""The parts of one training step — one ordered definition every planner and renderer reads.

:data:`PARTS` is the single list of what a training step's memory is made of. Each :class:`Part`
carries every fact a renderer needs about it: its JSON key, its table heading, its bar glyph
(distinct characters, so the bars read without colour), its SVG colour and hatch, and a one-line
description for legends. The step table, the stacked bars and their SVG, and the JSON of ``plan``,
``size``, ``probe`` and ``check`` all iterate :data:`PARTS`; a part added here (say, quantized base
weights or an FSDP all-gather buffer) is one entry that every one of them picks up.

A :class:`Breakdown` holds bytes per part; its ``total_bytes`` is always the exact sum of its
parts (there is no other total to drift from it). Each part lives in one memory (``Part.where``):
the device's (what the fit checks against its usable memory, ``device_bytes``) or, for a recipe
that offloads the optimizer, the host's (``host_bytes``, checked against the host memory). A part
whose size is not known (activations of weights without an architecture) is listed in
``unknown``: it counts 0 in the sums, which are then lower bounds, and JSON writes it as ``null``. Every part is counted as the training process's
allocator allocates it: each tensor rounded up to the allocator's quantum (64 B on CPU, 512 B on
CUDA, see :mod:`smmf_plan.allocators`). That is why the optimizer state's key is
``state_allocated``: the *logical* state bytes (the sum of ``numel × itemsize`` over the state
tensors, what ``optimizer.state`` holds) are a different figure, ``state_bytes``, which stays on the
optimizer's state plan and beside the breakdown in JSON.

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping


@dataclass(frozen=True)
class Part:
    """One part of a training step and how every renderer shows it."""

    #: key in a JSON ``breakdown`` object and in :class:`Breakdown`.
    key: str
    #: column heading in the step table (short: the table keeps to 80 columns).
    heading: str
    #: word naming the part in bar legends and SVG labels.
    label: str
    #: bar character in the terminal; distinct per part, so bars read in monochrome.
    glyph: str
    #: rich style of the glyph (colour is an aid, never the only cue).
    style: str
    #: SVG fill (colour-blind-safe Okabe–Ito palette).
    colour: str
    #: SVG hatch pattern drawn over the fill ("" = plain): see :mod:`smmf_plan.report.bars`.
    hatch: str
    #: one line: what the part counts (legends, the README's JSON section).
    description: str
    #: shown only where some row has bytes in it (a part most steps do not have, such as an
    #: offloaded copy); a part with ``optional=False`` is always a column and a JSON key.
    optional: bool = False
    #: the memory holding it: "device" (checked against usable memory) or "host" (offload).
    where: str = "device"


#: the parts of a training step, in the order tables, bars and JSON list them.
PARTS: tuple[Part, ...] = (
    Part("weights", "weights", "weights", "█", "blue", "#0072B2", "",
         "every parameter and buffer in the planned dtype (fp32 master weights under AMP)"),
    Part("master", "master", "master weights", "▌", "red", "#D55E00", "horizontal",
         "a separate fp32 master copy of the weights this rank updates (DeepSpeed ZeRO's "
         "partition)", optional=True),
    Part("grads", "grads", "grads", "▓", "cyan", "#56B4E9", "diagonal",
         "one gradient per trainable parameter"),
    Part("state_allocated", "state", "state", "▒", "yellow", "#E69F00", "",
         "the optimizer state as allocated (each tensor rounded up; the logical bytes are "
         "state_bytes)"),
    Part("activations", "activ.", "activations", "░", "green", "#009E73", "dots",
         "the traced forward+backward peak beyond the gradients, at the planned batch"),
    Part("temporaries", "temp.", "temporaries", "▚", "magenta", "#CC79A7", "cross",
         "the optimizer step's temporaries beyond the activation term (all of them for an "
         "optimizer that keeps its scratch between steps)"),
    Part("comm", "comm.", "comm. buffers", "▥", "bright_yellow", "#F0E442", "diagonal",
         "distributed training's buffers and gathered copies at the step's peak: DDP gradient "
         "buckets; FSDP2 gathered units, unsharded gradients and reduce-scatter buffers; ZeRO "
         "buckets and gathered parameters", optional=True),
    Part("allocator", "alloc", "allocator", "╳", "bright_red", "#882255", "",
         "memory the allocator holds beyond the live tensors at the peak: glibc's freed heap "
         "blocks still resident, the CUDA caching allocator's reserved but unallocated segments",
         optional=True),
    Part("runtime", "runtime", "runtime", "·", "bright_black", "#999999", "horizontal",
         "the process itself: PyTorch and the model library on CPU, cuBLAS workspaces on CUDA"),
    Part("host_copies", "h.copies", "host copies", "▦", "bright_blue", "#332288", "vertical",
         "offload: pinned host copies of the offloaded trainable parameters and of their "
         "gradients (pinned blocks are powers of two)", optional=True, where="host"),
    Part("host_state", "h.state", "host state", "▧", "bright_cyan", "#44AA99", "diagonal",
         "offload: the optimizer state of the offloaded parameters, on the host", optional=True,
         where="host"),
    Part("host_temporaries", "h.temp", "host temporaries", "▨", "bright_magenta", "#000000", "cross",
         "offload: the host optimizer step's temporaries (one parameter at a time)", optional=True,
         where="host"),
    Part("host_runtime", "h.runtime", "host runtime", "▩", "white", "#666666", "horizontal",
         "offload: the training process on the host (PyTorch and the model library)",
         optional=True, where="host"),
)

KEYS: tuple[str, ...] = tuple(p.key for p in PARTS)
BY_KEY: Mapping[str, Part] = {p.key: p for p in PARTS}
#: the memories a part can live in.
MEMORIES = ("device", "host")


class Breakdown(Mapping[str, int]):
    """Bytes per part of one training step (a read-only mapping over :data:`KEYS`, in order).

    ``Breakdown(weights=…, grads=…)`` or ``Breakdown({"weights": …})``: parts not given are 0, an
    unknown key or a negative or non-integer byte count is a :class:`ValueError`.
    ``total_bytes`` is the exact sum of the parts, always. ``unknown``: parts whose size is not
    known (0 here, ``null`` in JSON)."""

    __slots__ = ("_bytes", "_unknown")

    def __init__(self, parts: Mapping[str, int] | None = None, /, *, unknown: Iterable[str] = (),
                 **more: int) -> None:
        given = {**(parts or {}), **more}
        bad = [k for k in [*given, *unknown] if k not in BY_KEY]
        if bad:
            raise ValueError(f"unknown step part(s) {bad}: the parts are {', '.join(KEYS)}")
        self._unknown: frozenset[str] = frozenset(unknown)
        if any(given.get(k) for k in self._unknown):
            raise ValueError(f"parts {sorted(self._unknown)} are unknown: they hold no bytes")
        values = []
        for key in KEYS:
            n = given.get(key, 0)
            if isinstance(n, bool):
                raise ValueError(f"step part {key!r} must be a whole number of bytes, got {n!r}")
            try:
                n = operator.index(n)
            except TypeError:
                raise ValueError(f"step part {key!r} must be a whole number of bytes, got {n!r}") from None
            if n < 0:
                raise ValueError(f"step part {key!r} must not be negative, got {n}")
            values.append(n)
        self._bytes: tuple[int, ...] = tuple(values)

    def __getitem__(self, key: str) -> int:
        try:
            return self._bytes[KEYS.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(KEYS)

    def __len__(self) -> int:
        return len(KEYS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={'?' if k in self._unknown else v}" for k, v in zip(KEYS, self._bytes))
        return f"Breakdown({inner})"

    @property
    def total_bytes(self) -> int:
        """The exact sum of the parts (of the known ones: a lower bound when some are unknown)."""
        return sum(self._bytes)

    def bytes_in(self, where: str) -> int:
        """The sum of the parts held in ``where`` ("device" or "host")."""
        return sum(n for p, n in zip(PARTS, self._bytes) if p.where == where)

    @property
    def device_bytes(self) -> int:
        """What the device holds: the figure its usable memory is checked against."""
        return self.bytes_in("device")

    @property
    def host_bytes(self) -> int:
        """What an offloading recipe keeps on the host (0 otherwise)."""
        return self.bytes_in("host")

    @property
    def unknown(self) -> frozenset[str]:
        """Parts whose size is not known (their 0 makes every sum a lower bound)."""
        return self._unknown

    @property
    def complete(self) -> bool:
        return not self._unknown

    def replace(self, **parts: int) -> "Breakdown":
        """A copy with the given parts changed (a part given bytes is no longer unknown)."""
        return Breakdown({**dict(self), **parts}, unknown=self._unknown - set(parts))

    def to_dict(self) -> dict[str, int | None]:
        """``{key: bytes}`` in part order: every part, except an optional one with no bytes; an
        unknown part is ``None``."""
        return {p.key: (None if p.key in self._unknown else n) for p, n in zip(PARTS, self._bytes)
                if n or not p.optional or p.key in self._unknown}


def shown(breakdowns: Iterable[Mapping[str, int]], where: str | None = None) -> tuple[Part, ...]:
    """The parts to show for these rows: every part, except an optional one that no row has;
    only those held in ``where`` ("device" or "host") when given."""
    rows = list(breakdowns)
    return tuple(p for p in PARTS if (where is None or p.where == where)
                 and (not p.optional or any(r.get(p.key, 0) for r in rows)))


@dataclass(frozen=True)
class StepMemory:
    """One optimizer's training step, as the fit layer and the renderers see it: the breakdown at
    the planned batch, ``total_at(batch)`` — the device's bytes at a batch size, for the
    largest-batch search (non-decreasing) — and the logical state bytes shown beside the
    breakdown. ``complete`` is False when the activation term could not be estimated (the totals
    are lower bounds), which every renderer must say."""

    optimizer: str
    breakdown: Breakdown
    total_at: Callable[[int], int]
    complete: bool = True
    #: logical optimizer-state bytes (``StatePlan.state_bytes``); None where not planned.
    state_bytes: int | None = None
    #: a distributed plan's ranks with identical figures (:class:`smmf_plan.dist.RankStep`, each
    #: with ``to_dict()``); the breakdown above is then the largest rank's. Empty: one process.
    ranks: tuple = ()

    @property
    def total_bytes(self) -> int:
        return self.breakdown.total_bytes

    @property
    def device_bytes(self) -> int:
        return self.breakdown.device_bytes

    @property
    def host_bytes(self) -> int:
        """Host bytes (offload): they do not grow with the batch."""
        return self.breakdown.host_bytes

    def to_dict(self) -> dict:
        """``{"state_bytes", "breakdown", "total_bytes", "device_bytes", "host_bytes"}``:
        ``total_bytes`` is the sum of the breakdown (of its known parts, ``complete`` false
        otherwise), ``device_bytes`` + ``host_bytes`` split it by memory; ``state_bytes`` the
        logical state (``breakdown["state_allocated"]`` is it rounded by the allocator). A
        distributed plan adds ``ranks``: one entry per group of ranks with identical figures, the
        same three fields each, the top level being the largest rank's."""
        d: dict = {}
        if self.state_bytes is not None:
            d["state_bytes"] = self.state_bytes
        d["breakdown"] = self.breakdown.to_dict()
        d["total_bytes"] = self.total_bytes
        d["device_bytes"] = self.device_bytes
        d["host_bytes"] = self.host_bytes
        if not (self.complete and self.breakdown.complete):
            d["complete"] = False
        if self.ranks:
            d["ranks"] = [r.to_dict() for r in self.ranks]
        return d
