"""Telling buffers from parameters in a state dict without the architecture.

A state dict (or safetensors file) stores parameters and persistent buffers side by side; only
parameters get optimizer state. Without a config to build the architecture from, a tensor is taken
to be a buffer when its dtype is not floating point (integer counters, index tables, boolean masks)
or its name ends in a well-known buffer name (BatchNorm statistics, position-id tables, rotary
frequencies, GPT-2's causal mask ``attn.bias`` / ``attn.masked_bias``, Swin's relative position
index, ...). Everything else is a parameter.
"""

from __future__ import annotations

from .. import dtypes

#: last name components that are always buffers.
BUFFER_LEAVES = frozenset({
    "running_mean", "running_var", "num_batches_tracked",
    "position_ids", "token_type_ids",
    "inv_freq", "original_inv_freq", "cos_cached", "sin_cached", "_cos_cached", "_sin_cached",
    "relative_position_index", "relative_coords_table",
    "masked_bias", "attn_mask", "attention_mask", "causal_mask", "_float_tensor",
})

#: (parent, leaf) pairs that are buffers: GPT-2's causal mask is registered as ``attn.bias``.
BUFFER_PAIRS = frozenset({("attn", "bias"), ("crossattention", "bias")})


def is_buffer(name: str, dtype: str, shape: tuple[int, ...]) -> bool:
    """Whether a stored tensor is a buffer (see the module docstring for the rules)."""
    if dtypes.canonical(dtype) not in dtypes.FLOATING:
        return True
    parts = name.split(".")
    if parts[-1] in BUFFER_LEAVES:
        return True
    # GPT-2: ``h.0.attn.bias`` is the (1, 1, n, n) causal mask; ``h.0.attn.c_attn.bias`` is a param.
    if len(parts) >= 2 and (parts[-2], parts[-1]) in BUFFER_PAIRS and len(shape) == 4:
        return True
    return False
