"""``--trainable`` / ``--freeze`` / ``--target`` name globs (fnmatch, case-sensitive, matched
against a parameter's name and its tied aliases)."""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Sequence

from ..errors import PlanError
from ..shapes import ParamSpec


def _hits(p: ParamSpec, glob: str) -> bool:
    return any(fnmatchcase(n, glob) for n in (p.name, *p.aliases))


def _check(params: Sequence[ParamSpec], globs: Sequence[str], flag: str) -> None:
    for g in globs:
        if not any(_hits(p, g) for p in params):
            sample = ", ".join(p.name for p in params[:3])
            raise PlanError(f"{flag} {g!r} matches no parameter name; names look like {sample} "
                            "(use shell-style globs such as '*.attention.*')")


def select_trainable(params: list[ParamSpec], trainable: Sequence[str] = (),
                     freeze: Sequence[str] = (), *, keep_trainable: bool = False) -> list[ParamSpec]:
    """Apply the globs: with ``trainable`` globs only matching parameters train (plus the already
    trainable ones when ``keep_trainable`` — LoRA adapters); ``freeze`` globs then freeze matches.
    A glob that matches nothing raises :class:`PlanError`."""
    trainable = [g for g in trainable if g]
    freeze = [g for g in freeze if g]
    _check(params, trainable, "--trainable")
    _check(params, freeze, "--freeze")
    out = []
    for p in params:
        t = p.trainable
        if trainable:
            t = (t and keep_trainable) or any(_hits(p, g) for g in trainable)
        if any(_hits(p, g) for g in freeze):
            t = False
        out.append(p if t == p.trainable else replace(p, trainable=t))
    return out


def select_targets(params: list[ParamSpec], targets: Sequence[str] = ()) -> list[ParamSpec]:
    """``--target`` globs: the 2-D parameters they match are the ones low-rank and orthogonalizing
    optimizers treat, every other parameter is not (replacing
    :data:`smmf_plan.sources.roles.TARGET_RULE`). A glob that matches no 2-D parameter raises
    :class:`PlanError`. No globs: ``params`` unchanged."""
    targets = [g for g in targets if g]
    if not targets:
        return params
    matrices = [p for p in params if len(p.shape) == 2]
    for g in targets:
        if not any(_hits(p, g) for p in matrices):
            others = [p.name for p in params if _hits(p, g)]
            why = (f"only parameters that are not 2-D ({', '.join(others[:3])})" if others
                   else "no parameter")
            sample = ", ".join(p.name for p in matrices[:3]) or "none"
            raise PlanError(f"--target {g!r} matches {why}; low-rank and orthogonalizing optimizers "
                            f"treat 2-D weights only (2-D names look like {sample})")
    return [replace(p, target=len(p.shape) == 2 and any(_hits(p, g) for g in targets))
            for p in params]
