"""What one probe subprocess is asked to do (a JSON-able job)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..optimizers import parse


def default_lr(optimizer_id: str) -> float:
    """The registry's probe learning rate for ``optimizer_id``'s family
    (:attr:`smmf_plan.optimizers.OptimizerInfo.probe_lr`): large enough that the loss visibly
    falls within 3-10 steps on a randomly initialised model, small enough not to diverge."""
    return parse(optimizer_id).probe_lr


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


__all__ = ["ProbeJob", "default_lr"]
