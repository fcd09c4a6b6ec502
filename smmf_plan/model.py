"""What a model source resolves to: a name, where it came from, and its parameter specs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .shapes import ParamSpec

#: bump when the cached form of a ModelSpec changes.
SPEC_FORMAT = 2  # 2: ParamSpec.linear / head / target


@dataclass
class ModelSpec:
    name: str
    #: source kind: "timm", "transformers", "config", "safetensors", "state_dict", "hub".
    source: str
    params: list[ParamSpec]
    #: anything else a later stage may want: library, architecture class, task, default input
    #: size, config dict ... (JSON-serializable).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def num_tensors(self) -> int:
        return len(self.params)

    @property
    def trainable(self) -> list[ParamSpec]:
        return [p for p in self.params if p.trainable]

    @property
    def trainable_params(self) -> int:
        return sum(p.numel for p in self.trainable)

    def to_dict(self) -> dict:
        return {
            "format": SPEC_FORMAT,
            "name": self.name,
            "source": self.source,
            "params": [p.to_dict() for p in self.params],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        if d.get("format") != SPEC_FORMAT:
            raise ValueError("stale model-spec format")
        return cls(
            name=d["name"], source=d["source"],
            params=[ParamSpec.from_dict(p) for p in d["params"]], meta=d.get("meta", {}),
        )

    @property
    def architecture(self) -> str | None:
        """The class built for this model (``LlamaForCausalLM``, ``ResNet`` …); None for weights
        read without a config."""
        return (self.meta or {}).get("architecture")

    @property
    def dtypes(self) -> dict[str, int]:
        """Parameters per dtype, largest share first (ties by name)."""
        counts: dict[str, int] = {}
        for p in self.params:
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def dtype(self) -> str | None:
        """The dtype every parameter is planned in, ``"mixed"`` when they differ (see
        :attr:`dtypes`), None without parameters."""
        kinds = {p.dtype for p in self.params}
        return None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def facts(self) -> dict[str, int | None]:
        """The model facts optimizers may need (:func:`model_facts`)."""
        return model_facts(self.meta)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "class": self.architecture,
            "num_params": self.num_params,
            "num_tensors": self.num_tensors,
            "trainable_params": self.trainable_params,
            "dtype": self.dtype,
            "dtypes": self.dtypes,
        }


#: config keys that hold each model fact, in the order transformers' model families use them.
_FACT_KEYS = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim", "embed_dim"),
    "num_attention_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads",
                            "encoder_attention_heads"),
    "num_key_value_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads",
                            "multi_query_group_num"),
}


def model_facts(meta: dict[str, Any] | None) -> dict[str, int | None]:
    """Hidden size and attention head counts from the model's config (``meta["config"]``), the
    facts Adam-mini's per-head rule needs; ``None`` where the config does not say (timm models,
    checkpoints without a config). ``num_key_value_heads`` defaults to the head count (no GQA)."""
    cfg = (meta or {}).get("config")
    cfg = cfg if isinstance(cfg, dict) else {}
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    out: dict[str, int | None] = {}
    for fact, keys in _FACT_KEYS.items():
        value = next((d[k] for d in (cfg, text) for k in keys if isinstance(d.get(k), int)), None)
        out[fact] = value
    if out["num_key_value_heads"] is None:
        out["num_key_value_heads"] = out["num_attention_heads"]
    return out
