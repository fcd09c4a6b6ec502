"""The optimizer registry: one line per family, and the id grammar.

Ids are ``NAME[:key=value,...]`` (``adafactor:beta1=none``, ``smmf:sign=bool``); a list is
comma-separated (``adam,smmf:sign=bool,beta=none`` — a ``key=value`` after a comma continues the
previous id), and ``all`` expands to :data:`ALL_IDS`.
"""

from __future__ import annotations

import difflib

from . import (
    adafactor,
    adalayer,
    adam,
    adam_mini,
    ademamix,
    apollo,
    came,
    coap,
    fadam,
    galore,
    hfac,
    lion,
    lowbit,
    muon,
    schedulefree,
    sgd,
    signum,
    sm3,
    smmf,
    soap,
)
from .base import OptimizerInfo, OptimizerVariant, UnknownOptimizer

#: every family by id, in the order tables list them.
FAMILIES: dict[str, OptimizerInfo] = {info.id: info for info in (
    adam.ADAM,
    adam.ADAMW,
    adafactor.INFO,
    came.INFO,
    sm3.INFO,
    smmf.INFO,
    sgd.INFO,
    lion.INFO,
    signum.INFO,
    lowbit.ADAMW8BIT,
    lowbit.ADAMW4BIT,
    lowbit.ADAMWFP8,
    adam_mini.INFO,
    galore.INFO,
    apollo.APOLLO,
    apollo.APOLLO_MINI,
    coap.INFO,
    muon.INFO,
    soap.INFO,
    fadam.INFO,
    ademamix.INFO,
    schedulefree.INFO,
    adalayer.INFO,
    hfac.INFO,
)}

#: the five optimizers the mission compares, shown when no ``--optimizer`` is given.
DEFAULT_IDS = ("adam", "adafactor", "came", "sm3", "smmf")
#: what ``--optimizer all`` selects: every family and the variants worth comparing.
ALL_IDS = ("adam", "adamw", "adafactor", "adafactor:beta1=none", "came", "sm3", "smmf",
           "smmf:sign=bool", "sgd", "sgd:momentum=0.9", "lion", "signum", "adamw8bit",
           "adamw8bit:impl=torchao", "adamw4bit", "adamwfp8", "adam-mini", "galore", "apollo", "apollo-mini",
           "coap", "muon", "soap", "fadam", "ademamix",
           "schedulefree-adamw", "adalayer", "hfac")


def family_of(text: str) -> str:
    """The family part of an id, normalised (``"SMMF:sign=bool"`` → ``"smmf"``)."""
    return text.split(":", 1)[0].strip().lower()


def suggest(name: str, candidates=None, n: int = 3) -> list[str]:
    """The closest known ids (or ``candidates``) to ``name``."""
    pool = list(FAMILIES) if candidates is None else list(candidates)
    return difflib.get_close_matches(name, pool, n=n, cutoff=0.6)


def get(family: str) -> OptimizerInfo:
    """The info of one family id; :class:`UnknownOptimizer` with the closest ids otherwise."""
    info = FAMILIES.get(family.strip().lower())
    if info is None:
        close = suggest(family.strip().lower())
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownOptimizer(f"unknown optimizer {family.strip()!r}{hint} "
                               f"(known: {', '.join(FAMILIES)}, or 'all'; see smmf-plan optimizers)")
    return info


def by_paper_name(name: str) -> OptimizerInfo:
    """The family the SMMF paper's tables call ``name`` (``"SMMF"`` → smmf)."""
    for info in FAMILIES.values():
        if info.paper_name == name:
            return info
    raise KeyError(f"no registered optimizer has the paper name {name!r}")


def parse(text: str) -> OptimizerVariant:
    """One optimizer id (with optional variant options) → its configured variant."""
    raw = text.strip()
    name, _, rest = raw.partition(":")
    info = get(name)
    opts = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not eq or key not in info.options:
            known = ", ".join(f"{k}=…" for k in info.options) or "none"
            close = suggest(key, info.options, n=1)
            hint = f"did you mean {close[0]}? " if close and eq else ""
            raise UnknownOptimizer(f"bad option {item!r} for optimizer {info.id!r}: {hint}"
                                   f"expected key=value with key in: {known}")
        try:
            opts[key] = info.options[key].parse(value)
        except ValueError as e:
            raise UnknownOptimizer(f"bad value for {info.id}:{key}: {e}") from None
    return OptimizerVariant(info, raw, **opts)


def split_ids(text: str) -> list[str]:
    """A comma-separated list → ids. Commas are ambiguous with variant options
    (``smmf:sign=bool,beta=none``), so a part that is ``key=value`` without a family name
    continues the previous id; ``all`` expands to :data:`ALL_IDS`."""
    ids: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        head = family_of(part).split("=", 1)[0].strip()
        if ids and "=" in part and ":" not in part and head not in FAMILIES and head != "all":
            ids[-1] += "," + part
        else:
            ids.append(part)
    return [i for x in ids for i in (ALL_IDS if x.lower() == "all" else (x,))]


def parse_many(text: str | None) -> list[OptimizerVariant]:
    """A ``--optimizer`` value → variants, duplicates dropped; empty or ``None``: the defaults."""
    ids = list(DEFAULT_IDS) if text is None or not text.strip() else split_ids(text)
    seen, out = set(), []
    for i in ids:
        variant = parse(i)
        if variant.id not in seen:
            seen.add(variant.id)
            out.append(variant)
    return out


def variants_of(family: str) -> list[str]:
    """The ids in :data:`ALL_IDS` that belong to ``family``."""
    return [i for i in ALL_IDS if family_of(i) == family]


def describe() -> list[dict]:
    """Every family as ``smmf-plan optimizers --json`` prints it."""
    return [{**info.to_dict(), "default": info.id in DEFAULT_IDS, "variants": variants_of(info.id)}
            for info in FAMILIES.values()]
