"""timm architectures on the meta device."""

from __future__ import annotations

from typing import Any

from ..errors import SourceError
from ..quiet import quiet_libraries
from ..tasks import IMAGE_CLASSIFICATION


def is_timm_name(name: str) -> bool:
    """Whether ``name`` (optionally with a ``.pretrained_tag``) is a timm architecture."""
    if "/" in name or ":" in name or not name.strip():
        return False
    from timm.models import is_model, split_model_name_tag

    arch, _ = split_model_name_tag(name)
    return bool(is_model(arch))


def build(name: str, *, num_classes: int | None = None, device: str = "meta"):
    """``(module, info)`` for timm architecture ``name`` (no weights are downloaded)."""
    import torch


    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        with torch.device(device), quiet_libraries():
            import timm

            model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"timm could not build {name!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); check the name and --num-classes") from None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size")
    info: dict[str, Any] = {
        "library": "timm",
        "architecture": type(model).__name__,
        "task": IMAGE_CLASSIFICATION,
        "input_size": list(input_size) if input_size else None,
        "num_classes": int(getattr(model, "num_classes", num_classes or 0) or 0) or num_classes,
        "config": None,
        "timm_name": name,
    }
    return model, info
