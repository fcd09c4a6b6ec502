"""The parts of one training step — one ordered definition every planner and renderer reads.

:data:`PARTS` is the single list of what a training step's memory is made of. Each :class:`Part`
carries every fact a renderer needs about it: its JSON key, its table heading, its bar glyph
(distinct characters, so the bars read without colour), its SVG colour and hatch, and a one-line
description for legends. The step table, the stacked bars and their SVG, and the JSON of ``plan``,
``size``, ``probe`` and ``check`` all iterate :data:`PARTS`; a part added here (say, quantized base
weights or an FSDP all-gather buffer) is one entry that every one of them picks up.

A :class:`Breakdown` holds bytes per part; its ``total_bytes`` is always the exact sum of its
parts (there is no other total to drift from it). Every part is counted as the training process's
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
)

KEYS: tuple[str, ...] = tuple(p.key for p in PARTS)
BY_KEY: Mapping[str, Part] = {p.key: p for p in PARTS}


class Breakdown(Mapping[str, int]):
    """Bytes per part of one training step (a read-only mapping over :data:`KEYS`, in order).

    ``Breakdown(weights=…, grads=…)`` or ``Breakdown({"weights": …})``: parts not given are 0, an
    unknown key or a negative or non-integer byte count is a :class:`ValueError`.
    ``total_bytes`` is the exact sum of the parts, always."""

    __slots__ = ("_bytes",)

    def __init__(self, parts: Mapping[str, int] | None = None, /, **more: int) -> None:
        given = {**(parts or {}), **more}
        unknown = [k for k in given if k not in BY_KEY]
        if unknown:
            raise ValueError(f"unknown step part(s) {unknown}: the parts are {', '.join(KEYS)}")
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
        inner = ", ".join(f"{k}={v}" for k, v in zip(KEYS, self._bytes))
        return f"Breakdown({inner})"

    @property
    def total_bytes(self) -> int:
        """The exact sum of the parts."""
        return sum(self._bytes)

    def replace(self, **parts: int) -> "Breakdown":
        """A copy with the given parts changed."""
        return Breakdown({**dict(self), **parts})

    def to_dict(self) -> dict[str, int]:
        """``{key: bytes}`` in part order: every part, except an optional one with no bytes."""
        return {p.key: n for p, n in zip(PARTS, self._bytes) if n or not p.optional}


def shown(breakdowns: Iterable[Mapping[str, int]]) -> tuple[Part, ...]:
    """The parts to show for these rows: every part, except an optional one that no row has."""
    rows = list(breakdowns)
    return tuple(p for p in PARTS if not p.optional or any(r.get(p.key, 0) for r in rows))


@dataclass(frozen=True)
class StepMemory:
    """One optimizer's training step, as the fit layer and the renderers see it: the breakdown at
    the planned batch, ``total_at(batch)`` for the largest-batch search (non-decreasing), and the
    logical state bytes shown beside the breakdown. ``complete`` is False when the activation term
    could not be estimated (the totals are lower bounds), which every renderer must say."""

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

    def to_dict(self) -> dict:
        """``{"state_bytes", "breakdown", "total_bytes"}``: ``total_bytes`` is the sum of the
        breakdown; ``state_bytes`` the logical state (``breakdown["state_allocated"]`` is it
        rounded by the allocator). A distributed plan adds ``ranks``: one entry per group of
        ranks with identical figures, the same three fields each, the top level being the
        largest rank's."""
        d: dict = {}
        if self.state_bytes is not None:
            d["state_bytes"] = self.state_bytes
        d["breakdown"] = self.breakdown.to_dict()
        d["total_bytes"] = self.total_bytes
        if self.ranks:
            d["ranks"] = [r.to_dict() for r in self.ranks]
        return d
