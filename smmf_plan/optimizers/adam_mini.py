"""Adam-mini (Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More", 2024) as the
``adam-mini`` package's ``Adam_mini`` 1.1.1.

Adam-mini keeps Adam's full first moment ``m`` but one second-moment value ``vmean`` per block,
choosing the block by the parameter's (lowercased) name, in this order:

* a name with ``bias``: plain Adam (``m`` and ``v`` of the parameter's shape);
* query / key (``q_proj``, ``k_proj``, ``wq``, ``wk``, ``query``, ``key``): one value per head:
  ``m`` is viewed as ``(numel / head_numel, head_numel)`` with ``head_numel = dim² / n_heads``, and
  ``vmean`` is ``(heads, 1)`` (K under GQA has ``n_kv_heads`` rows);
* embedding, output, value, attention projection and MLP (``embed``, ``embd``, ``wte``,
  ``lm_head``, ``output``, ``final_layer``, ``v_proj``, ``wv``, ``value``, ``o_proj``, ``wo``,
  ``attn.proj``, ``feed_forward``, ``linear``, ``mlp``): one value per output row, ``vmean`` of
  shape ``(rows, 1, ...)``;
* anything else (norms, convolutions, CNNs): one 0-d ``vmean`` per tensor.

Everything is in the parameter's dtype; ``step`` is a Python int. ``dim``, ``n_heads`` and
``n_kv_heads`` come from the model's config (hidden size and head counts) unless given; without a
config the package's defaults (2048, 32) apply, as they would in a user's script. Where the
package itself fails, the plan says so instead of inventing bytes: a 1-D or 0-d tensor whose name
asks for per-row values (BERT's ``attention.output.LayerNorm.weight``: "too many indices"), or a
query/key tensor not divisible into heads.

Step temporaries (one parameter at a time): the squared gradient and the update (a = 2) plus
``h`` and the reshaped step size, both of ``vmean``'s size.

Probe learning rate 1e-3, the package's default.
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec
from .base import (
    LOOP_ONLY,
    VERIFIED_BY_TESTS,
    Interval,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
    Unsupported,
    param_dtype,
)

EMBED = ("embed", "embd", "wte")
OUTPUT = ("lm_head", "output", "final_layer")
QK = ("k_proj", "q_proj", "wq", "wk", "query", "key")
V = ("v_proj", "wv", "value")
ATTN_PROJ = ("o_proj", "wo", "attn.proj")
MLP = ("feed_forward", "linear", "mlp")
#: the package's constructor defaults, used when neither the user nor the model says.
DEFAULT_DIM, DEFAULT_HEADS = 2048, 32


def block(name: str) -> str:
    """Which of Adam-mini's rules a parameter named ``name`` falls under: ``adam``, ``head``,
    ``row`` or ``tensor``."""
    n = name.lower()
    if "bias" in n:
        return "adam"
    if any(k in n for k in QK):
        return "head"
    if any(k in n for k in EMBED + OUTPUT + V + MLP + ATTN_PROJ):
        return "row"
    return "tensor"


def _dims(o: Options) -> tuple[int, int]:
    dim = o["dim"] if o["dim"] is not None else DEFAULT_DIM
    heads = o["n_heads"] if o["n_heads"] is not None else DEFAULT_HEADS
    return dim, heads


def _vmean_shape(o: Options, spec: ParamSpec) -> tuple[tuple[int, ...] | None, tuple[int, ...]]:
    """``(m's view shape or None, vmean's shape)``."""
    kind = block(spec.name)
    shape = spec.shape
    if kind == "head":
        dim, heads = _dims(o)
        head_numel = dim * dim // heads
        if head_numel == 0 or spec.numel % head_numel:
            raise Unsupported(f"Adam-mini cannot view {spec.name} ({spec.numel} elements) as "
                              f"heads of dim²/n_heads = {head_numel} (dim={dim}, n_heads={heads}); "
                              "give adam-mini:dim=...,n_heads=... as the model has them")
        rows = spec.numel // head_numel
        return (rows, head_numel), (rows, 1)
    if kind == "row":
        if len(shape) < 2:
            raise Unsupported(f"Adam-mini 1.1.1 indexes {spec.name} ({len(shape)}-D) as a matrix "
                              "because its name asks for one value per row; the package fails "
                              "with 'too many indices' on this model")
        return None, (shape[0], 1, *shape[2:])
    return None, ()


def state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    pd = param_dtype(spec)
    if block(spec.name) == "adam":
        return [StateTensor("m", spec.shape, pd), StateTensor("v", spec.shape, pd)]
    view, vmean = _vmean_shape(o, spec)
    return [StateTensor("m", view or spec.shape, pd), StateTensor("vmean", vmean, pd)]


def _loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    peak = 0
    for s in specs:
        item = dtypes.itemsize(s.dtype)
        full = round_up(s.numel * item, quantum)
        if block(s.name) == "adam":
            peak = max(peak, 2 * full)
            continue
        try:
            _, vmean = _vmean_shape(o, s)
        except Unsupported:
            continue
        small = round_up(max(1, _numel(vmean)) * item, quantum)
        peak = max(peak, 2 * full + 2 * small)
    return peak


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def constructor(o: Options) -> dict:
    dim, heads = _dims(o)
    kwargs = dict(lr=1e-3, dim=dim, n_heads=heads, verbose=False)
    if o["n_kv_heads"] is not None:
        kwargs["n_kv_heads"] = o["n_kv_heads"]
    return kwargs


INFO = OptimizerInfo(
    id="adam-mini", display_name="Adam-mini",
    summary="Adam-mini: Adam's first moment, one second moment per head / row / tensor",
    implementation="adam_mini:Adam_mini",
    requires=Requirement("adam-mini", "adam_mini", extra="compare"),
    reproduces="adam_mini.Adam_mini, adam-mini 1.1.1", verified=VERIFIED_BY_TESTS,
    options={
        "dim": Option(None, "int|none", "hidden size (default: the model config's)", Interval(1, None)),
        "n_heads": Option(None, "int|none", "attention heads (default: the model config's)",
                          Interval(1, None)),
        "n_kv_heads": Option(None, "int|none", "key/value heads under GQA (default: the model "
                             "config's)", Interval(1, None)),
    },
    binds={"dim": "hidden_size", "n_heads": "num_attention_heads",
           "n_kv_heads": "num_key_value_heads"},
    named_params=True,
    state=state,
    temporaries={"for-loop": _loop},
    paths=LOOP_ONLY,
    probe_lr=1e-3, constructor=constructor,
)
