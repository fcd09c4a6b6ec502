"""Attention on meta tensors: route ``scaled_dot_product_attention`` to the kernel a CPU run picks.

Meta tensors would take the math path (which saves the attention matrix); the CPU build picks
flash attention when eligible, which saves far less. The choice is asked of the CPU build itself
on tiny real tensors with the same dtypes, head dims, mask, dropout and causal flags.

The routing replaces ``torch.nn.functional.scaled_dot_product_attention`` for the duration of a
trace (:func:`cpu_attention`), rather than a ``TorchFunctionMode``: the recomputation of
gradient checkpointing runs inside the autograd engine, where Python function modes are not
active, and a forward that took flash attention must be recomputed the same way (non-reentrant
checkpointing checks it). Models look the function up on the module when they call it
(transformers' ``sdpa_attention_forward``, timm's ``F.scaled_dot_product_attention``).
"""

from __future__ import annotations

import contextlib

_SDP_CACHE: dict[tuple, int] = {}
#: ``SDPBackend.flash_attention``: what ``_fused_sdp_choice`` returns for CPU flash attention.
_FLASH = 1


@contextlib.contextmanager
def cpu_attention():
    """``torch.nn.functional.scaled_dot_product_attention`` routed by :func:`sdpa_as_cpu` while
    active (restored afterwards)."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def routed(*args, **kwargs):
        out = sdpa_as_cpu(args, kwargs)
        return original(*args, **kwargs) if out is None else out

    F.scaled_dot_product_attention = routed
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def sdpa_as_cpu(args, kwargs):
    """Meta tensors would take the math path of ``scaled_dot_product_attention`` (which saves
    the attention matrix); call the CPU flash kernel instead when a CPU run would."""
    import torch

    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    q = bound.get("query")
    if not isinstance(q, torch.Tensor) or q.device.type != "meta":
        return None
    dropout, causal = float(bound.get("dropout_p", 0.0) or 0.0), bool(bound.get("is_causal", False))
    mask = bound.get("attn_mask")
    # grouped-query attention (fewer key/value heads): the CPU flash kernel takes it as it is
    gqa = bool(bound.get("enable_gqa", False))
    if _cpu_sdp_choice((q, bound["key"], bound["value"], mask, dropout, causal),
                       {"enable_gqa": gqa}) != _FLASH:
        return None
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, bound["key"], bound["value"], dropout, causal, attn_mask=mask,
        scale=bound.get("scale"))[0]


def _cpu_sdp_choice(args, kwargs) -> int | None:
    """On meta tensors, ask the CPU build which attention kernel it would use for the same
    dtypes/head dims/mask/dropout/causal flags (tiny real tensors), instead of meta's math path."""
    import torch

    q, k, v = args[:3]
    if q.device.type != "meta":
        return None
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    dropout = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
    causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
    gqa = kwargs.get("enable_gqa", False)
    key = (q.dtype, q.dim(), q.shape[-1], v.shape[-1], k.shape[-3] if k.dim() > 2 else 1,
           q.shape[-3] if q.dim() > 2 else 1, None if mask is None else mask.dtype, dropout > 0,
           bool(causal), bool(gqa))
    if key not in _SDP_CACHE:
        def tiny(t, heads):
            shape = [1] * (t.dim() - 1) + [t.shape[-1]]
            if t.dim() > 2:
                shape[-3] = heads
            return torch.zeros(shape, dtype=t.dtype)

        qh = q.shape[-3] if q.dim() > 2 else 1
        kh = k.shape[-3] if k.dim() > 2 else 1
        try:
            # outside the trace's modes: the probe tensors are not the model's allocations
            with torch.utils._python_dispatch._disable_current_modes():
                tq, tk, tv = tiny(q, qh), tiny(k, kh), tiny(v, kh)
                tm = None if mask is None else torch.zeros([1] * mask.dim(), dtype=mask.dtype)
                _SDP_CACHE[key] = int(torch.ops.aten._fused_sdp_choice.default(
                    tq, tk, tv, tm, float(dropout), bool(causal), enable_gqa=bool(gqa)))
        except Exception:  # noqa: BLE001 - fall back to what meta picks
            return None
    return _SDP_CACHE[key]

