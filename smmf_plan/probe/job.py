"""What one probe subprocess is asked to do (a JSON-able job), and the probe's learning rates."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: learning rate per optimizer family for the probe's few steps on a fixed random batch: large
#: enough that the loss visibly falls within 3-10 steps on a randomly initialised model, small
#: enough not to diverge. Adam/AdamW/Adafactor/SMMF: 1e-3 (their usual default; Adafactor with
#: relative_step=False); CAME: 2e-4 (its implementation's default; 5e-4 and up oscillate on a
#: small CNN with batch norm); SM3: 1e-2 (an Adagrad-style method: its first step has size
#: ~lr per coordinate, so the usual 0.1 overshoots on small random models).
DEFAULT_LR: dict[str, float] = {
    "adam": 1e-3, "adamw": 1e-3, "adafactor": 1e-3, "came": 2e-4, "sm3": 1e-2, "smmf": 1e-3,
}


def family(layout_id: str) -> str:
    return layout_id.split(":", 1)[0].strip().lower()


def default_lr(layout_id: str) -> float:
    return DEFAULT_LR.get(family(layout_id), 1e-3)


@dataclass
class ProbeJob:
    """One optimizer's run. ``model`` is a :meth:`ModelSpec.to_dict` (so the child does not resolve
    the source again); ``cap_bytes`` limits how much memory the training may add over the
    post-import baseline (see :mod:`.limits`); ``None`` means no cap."""

    model: dict[str, Any]
    optimizer: str
    steps: int = 10
    batch_size: int = 1
    input_size: list[int] | None = None
    seq_len: int | None = None
    device_type: str = "cpu"
    cap_bytes: int | None = None
    lr: float | None = None
    seed: int = 0
    #: intra-op threads for torch (``None``: torch's default, one per core).
    num_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbeJob":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else default_lr(self.optimizer)


__all__ = ["DEFAULT_LR", "ProbeJob", "default_lr", "family"]
