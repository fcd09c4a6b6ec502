"""ParamSpecs from an ``nn.Module`` built on the meta device (no storage is ever allocated)."""

from __future__ import annotations

from ..shapes import ParamSpec
from .roles import module_roles


def dtype_name(torch_dtype) -> str:
    return str(torch_dtype).removeprefix("torch.")


def specs_from_module(module) -> list[ParamSpec]:
    """One spec per distinct Parameter object, in registration order; tied parameters appear once
    under their first name with the others as ``aliases`` (optimizer state is keyed by the
    Parameter object, so a tied weight gets state once); ``linear``/``head`` as
    :func:`smmf_plan.sources.roles.module_roles` finds them."""
    first: dict[int, int] = {}
    names: list[list[str]] = []
    params = []
    for name, p in module.named_parameters(remove_duplicate=False):
        key = id(p)
        if key in first:
            names[first[key]].append(name)
            continue
        first[key] = len(params)
        params.append(p)
        names.append([name])
    roles = module_roles(module)
    return [
        ParamSpec(
            name=n[0], shape=tuple(p.shape), dtype=dtype_name(p.dtype),
            trainable=bool(p.requires_grad), aliases=tuple(n[1:]),
            linear=roles[id(p)][0], head=roles[id(p)][1],
        )
        for p, n in zip(params, names)
    ]
