"""Parameter-group rules shared by optimizers that treat some parameters specially (GaLore,
APOLLO, COAP, Muon: the parameters :func:`smmf_plan.targets.is_target` chooses) and give every
other parameter AdamW."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..shapes import ParamSpec
from ..targets import is_target
from .base import GroupRule, Options, ParamGroup


def targeted(treated: str, hyper: Callable[[Options], Mapping[str, Any]] = lambda o: {},
             rest: str = "adamw", rest_hyper: Mapping[str, Any] | None = None) -> GroupRule:
    """A group rule: the targeted parameters form group ``treated`` (its torch keys from
    ``hyper(options)``), the others group ``rest``; the targeted group comes first, as the
    implementations' examples list it."""

    def groups(o: Options, specs: Sequence[ParamSpec]) -> list[ParamGroup]:
        chosen = tuple(i for i, s in enumerate(specs) if is_target(s))
        other = tuple(i for i in range(len(specs)) if i not in set(chosen))
        return [ParamGroup(treated, chosen, dict(hyper(o))),
                ParamGroup(rest, other, dict(rest_hyper or {}))]

    return groups
