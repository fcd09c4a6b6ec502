"""Model sources → :class:`~smmf_plan.model.ModelSpec` (parameter specs, never weights).

``load_model(source)`` resolves, in this order: an existing path (a ``.safetensors`` file, a
``*.safetensors.index.json``, a ``.pt/.pth/.bin`` state dict, a ``config.json``, or a directory
holding a config and/or weights), a bundled config name or alias (``gpt2``,
``meta-llama/Llama-2-7b-hf`` ...), a timm architecture, then a Hugging Face hub id. Modules are only
ever built on the meta device; checkpoints are read header-only or as weights-only pickles. Results
are cached as JSON (see :mod:`.cache`) so a repeat needs no torch import.

This package imports no torch, timm or transformers at import time.
"""

from __future__ import annotations

from .lora import apply_lora
from .registry import bundled_models, suggestions
from .resolve import build_module, load_model

__all__ = ["load_model", "build_module", "suggestions", "bundled_models", "apply_lora"]
