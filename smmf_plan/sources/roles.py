"""Which parameters are the 2-D weights of linear layers, which belong to the output head, and
which of them low-rank and orthogonalizing optimizers treat (GaLore, APOLLO, COAP, Muon).

The facts are recorded on each :class:`~smmf_plan.shapes.ParamSpec` (``linear``, ``head``) when
the source is read, so the shape cache carries them:

* from a built module (timm, transformers, a config beside a checkpoint): ``linear`` is the
  ``weight`` of an ``nn.Linear`` (and subclasses) or of transformers' GPT-2-style ``Conv1D``;
  ``head`` is every parameter of the module the model names as its output head: timm's
  ``get_classifier()``, transformers' ``get_output_embeddings()`` (the LM head; a model without one,
  e.g. a sequence classifier, falls back to the name rule below);
* from a checkpoint without a config (names only): ``linear`` is a 2-D ``*.weight`` whose name
  does not mark an embedding or a norm (:data:`NOT_LINEAR_WORDS`), ``head`` a parameter of a module
  whose last name component is one of :data:`HEAD_NAMES`.

:data:`smmf_plan.targets.TARGET_RULE` turns the facts into the default choice of the treated
parameters; ``--target GLOB`` (:func:`smmf_plan.sources.select.select_targets`) replaces it.
Torch-free but :func:`module_roles`.
"""

from __future__ import annotations

from dataclasses import replace

from ..shapes import ParamSpec
from ..targets import HEAD_NAMES, NOT_LINEAR_WORDS


def _leaf_module(name: str) -> str:
    module = name.rpartition(".")[0]
    return module.rpartition(".")[2]


def head_by_name(name: str) -> bool:
    return _leaf_module(name) in HEAD_NAMES


def linear_by_name(name: str, shape) -> bool:
    low = name.lower()
    return (len(shape) == 2 and name.endswith(".weight")
            and not any(w in low for w in NOT_LINEAR_WORDS))


def by_name(spec: ParamSpec) -> ParamSpec:
    """``spec`` with ``linear``/``head`` decided by the name rule (checkpoints without a config)."""
    names = (spec.name, *spec.aliases)
    return replace(spec, linear=any(linear_by_name(n, spec.shape) for n in names),
                   head=any(head_by_name(n) for n in names))


def _output_head(module):
    """The module the model names as its output head, or ``None`` (then the name rule decides)."""
    for getter in ("get_classifier", "get_output_embeddings"):
        fn = getattr(module, getter, None)
        if fn is None:
            continue
        try:
            head = fn()
        except (NotImplementedError, AttributeError, TypeError):
            continue
        if head is not None and hasattr(head, "parameters"):
            return head
    return None


def module_roles(module) -> dict[int, tuple[bool, bool]]:
    """``{id(parameter): (linear, head)}`` for every parameter of a built ``nn.Module``."""
    from torch import nn

    linear: set[int] = set()
    for m in module.modules():
        w = getattr(m, "weight", None)
        if w is None or getattr(w, "ndim", 0) != 2:
            continue
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            linear.add(id(w))
    head_module = _output_head(module)
    if head_module is not None:
        head = {id(p) for p in head_module.parameters()}
    else:
        head = {id(p) for n, p in module.named_parameters(remove_duplicate=False) if head_by_name(n)}
    return {id(p): (id(p) in linear, id(p) in head)
            for p in module.parameters()}
