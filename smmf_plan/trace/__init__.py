"""Activation memory of one training step, found by running forward + backward on tensors without
data (the meta device, or fake CPU tensors under ``FakeTensorMode`` for mixed precision).

The package, by concern:

* :mod:`.inputs` - what one training batch is for each task (:class:`InputSpec`), built from a
  model's config, and the loss a step computes on it;
* :mod:`.storage` - :class:`StorageTracker`, live bytes of every tensor storage a step creates
  (with :mod:`.attention`, which routes attention on meta tensors to the kernel a CPU run picks,
  and :mod:`.opcache`, which answers an operator met again on inputs of the same metadata from
  its outputs' metadata instead of re-running its meta kernel);
* :mod:`.step` - :func:`trace_step`, one traced forward + backward and its figures;
* :mod:`.affine` - :class:`ActivationModel`, two traces fitted to ``fixed + per_sample · batch``.


What is counted (:func:`trace_step`): every tensor storage the step creates is tracked from the
operator that returns it (a ``TorchDispatchMode``) until the storage dies (a weakref finalizer on
the storage), so the live bytes at every moment of forward and backward are known, exactly as an
allocator would see them. Parameters and buffers exist before the step and are not counted; the
input batch is. Three figures come out of one trace:

* ``saved_bytes`` - what is alive at the end of forward: the tensors autograd keeps for backward
  plus the outputs and the input batch (deduplicated by storage), the classic "activations"
  figure. (Saved-tensor hooks were tried: an identity pack hook makes outputs saved by their own
  node a reference cycle, freed late, which inflated a GPT-2 peak by 20%; the storage tracker
  sees the same bytes without changing lifetimes.)
* ``peak_bytes`` - the largest live total during forward + backward: saved activations still
  alive + gradients produced so far + backward's transients (gradients of activations);
* ``grad_bytes`` / ``retained_bytes`` - what is still alive when backward returns: the parameter
  gradients, and what the caller still holds (model outputs such as logits, the loss).

The activation term of a memory breakdown is ``peak_bytes - grad_bytes``: the step's peak beyond the
gradients (which the breakdown counts separately, in full). Each figure is kept raw and rounded per
storage as each allocator rounds (64 B on CPU, 512 B on CUDA).

Assumptions, stated: the trace runs the module's own Python code, so data-dependent control flow
sees meta tensors (an operator that needs values fails and is reported as a
:class:`~smmf_plan.errors.TraceError`, and the estimate goes on without activations);
``scaled_dot_product_attention`` is routed to the kernel the CPU build would pick (flash attention
for CPU when eligible), which saves far less than the math path that meta tensors would otherwise
take. Two traces at batch sizes ``b1 < b2`` give an affine model ``a + b·batch``
(:class:`ActivationModel`), which holds because every activation scales with the batch.

Nothing here imports torch at import time (the warm path stays torch-free); torch is imported
inside the functions that run a trace.
"""

from __future__ import annotations

from .affine import TRACE_HIGH_BATCH, ActivationModel, Affine, activation_model, trace_batches
from .inputs import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEQ_LEN,
    InputSpec,
    default_loss,
    input_spec_for,
    parse_input_size,
)
from .step import ActivationTrace, trace_step
from .storage import StorageTracker

__all__ = [
    "DEFAULT_IMAGE_SIZE", "DEFAULT_SEQ_LEN", "TRACE_HIGH_BATCH", "ActivationModel", "ActivationTrace",
    "Affine", "InputSpec", "StorageTracker", "activation_model", "default_loss", "input_spec_for",
    "parse_input_size", "trace_batches", "trace_step",
]
