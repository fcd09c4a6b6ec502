"""Synthetic batches and losses for the probe's training steps: the same input the end-to-end
estimate traces (:func:`smmf_plan.trace.input_spec_for` and its loss), built on the real
device, so predicted and measured describe the same step.

Assumptions (from :mod:`smmf_plan.trace.inputs`, which names each task's batch and loss): image
models get ``(B, C, H, W)`` standard-normal inputs and uniform class ids (cross-entropy);
causal/masked LMs get uniform token ids with labels = the inputs (every position trained); seq2seq
models get labels of the input length; sequence classifiers a label per sample; a bare encoder is
trained on the mean of its first output. Values come from fixed seeds, so every optimizer sees the
same batch.
"""

from __future__ import annotations

from typing import Any

from ..errors import PlanError
from ..trace import default_loss, input_spec_for


def input_spec(spec, *, batch_size: int, input_size=None, seq_len=None):
    """The :class:`~smmf_plan.trace.InputSpec` for a ModelSpec (pure Python, no torch)."""
    return input_spec_for(spec, batch_size, list(input_size) if input_size else None, seq_len)


def resolve_input(spec, *, batch_size: int, input_size=None, seq_len=None) -> dict[str, Any]:
    """``{"task", "batch_size", "input_size" | "seq_len"}`` as the probe reports it."""
    s = input_spec(spec, batch_size=batch_size, input_size=input_size, seq_len=seq_len)
    if s.is_image and seq_len is not None:
        raise PlanError("--seq-len is for language models; use --input-size C,H,W for an image model")
    return s.to_dict()


def make_batch(in_spec, device) -> tuple[tuple, dict, Any]:
    """``(args, kwargs, target)`` with real random values, on ``device``."""
    args, kwargs, target = in_spec.make(device="cpu")
    args = tuple(a.to(device) for a in args)
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    return args, kwargs, None if target is None else target.to(device)


def compute_loss(module, batch: tuple[tuple, dict, Any]):
    """The scalar loss of one forward pass, as the activation trace computes it."""
    args, kwargs, target = batch
    return default_loss(module(*args, **kwargs), target)
