"""Sign matrices as bits: pack ``M > 0`` into ``uint8`` and unpack bits into exact ``±1`` floats.

Bit layout (the one :func:`smmf_plan.optimizers.smmf.smmf_state` sizes): element ``i`` of the flat,
row-major ``(n̂, m̂)`` matrix is bit ``i % 8`` (least significant first) of byte ``i // 8``; a
parameter owns ``⌈N/8⌉`` bytes and the unused high bits of its last byte are zero.

Everything is plain tensor arithmetic (no compiler, no host synchronisation), so it runs on any
device. Packing views eight ``bool`` bytes as one ``int64`` and gathers their low bits with one
multiplication by ``0x0102040810204080`` (bit ``8k`` lands on bit ``56 + k``; every cross term lands
above bit 63 or below bit 56 without carrying into the top byte, checked exhaustively in the tests).
Unpacking gathers rows of a 256×8 lookup table of ``±1``, which yields the signed multiplier the
decompression needs in a single pass.
"""

from __future__ import annotations

import torch

_MAGIC = 0x0102040810204080
_LUT_CACHE: dict[tuple, torch.Tensor] = {}


def sign_lut(device: torch.device, dtype: torch.dtype, fake: bool = False) -> torch.Tensor:
    """``(256, 8)`` table: row ``b`` holds ``+1`` where bit ``j`` of ``b`` is set, else ``-1``.
    Cached per device and dtype; ``fake`` (a step under FakeTensorMode) builds a fresh one, so
    that fake and real tensors never meet."""
    key = (str(device), dtype)
    lut = None if fake else _LUT_CACHE.get(key)
    if lut is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        lut = (bits * 2 - 1).to(device=device, dtype=dtype).contiguous()
        if not fake:
            _LUT_CACHE[key] = lut
    return lut


def unpack_signs(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``±1`` of ``dtype`` for the bits of ``packed`` (``(..., ⌈numel/8⌉)`` uint8) →
    ``(..., numel)``. A fresh tensor; contiguous whenever ``numel % 8 == 0`` or ``packed`` is 1-D."""
    from torch._subclasses.fake_tensor import FakeTensor

    lut = sign_lut(packed.device, dtype, fake=isinstance(packed, FakeTensor))
    nbytes = packed.shape[-1]
    flat = lut.index_select(0, packed.reshape(-1).to(torch.int32))
    out = flat.view(*packed.shape[:-1], nbytes * 8)
    if nbytes * 8 != numel:
        out = out[..., :numel]
    return out


def bools_to_bytes(flags: torch.Tensor) -> torch.Tensor:
    """Pack a contiguous ``bool`` tensor whose element count is a multiple of 8 into a fresh
    flat ``uint8`` tensor (same bit layout as :func:`pack_positive`)."""
    words = flags.reshape(-1).view(torch.uint8).view(torch.int64) * _MAGIC
    return words.bitwise_right_shift_(56).to(torch.uint8)


def unpack_bools(flags: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``±1`` of ``dtype`` for a ``bool`` tensor (same shape): packs to bits first, because
    the 8-wide table gather is several times faster than an element-wise ``where``."""
    numel = flags.numel()
    if numel % 8:
        padded = torch.zeros(numel + (-numel) % 8, dtype=torch.bool, device=flags.device)
        padded[:numel] = flags.reshape(-1)
        flags = padded
    return unpack_signs(bools_to_bytes(flags), numel, dtype)


def pack_positive(matrix: torch.Tensor, out: torch.Tensor, ws=None) -> None:
    """Write the bits of ``matrix > 0`` into ``out`` (uint8, ``(B, ⌈N/8⌉)`` or ``(⌈N/8⌉,)`` for
    ``matrix`` of ``(B, ...)`` or ``(...)``); ``out`` is overwritten in place (never re-allocated).
    """
    nbytes = out.shape[-1]
    lead = out.shape[:-1]
    numel = matrix.numel() // max(1, _prod(lead))
    if ws is not None and not lead:
        positive = ws.get("positive", nbytes * 8, torch.bool, matrix.device)
        positive_into(matrix.reshape(numel), positive[:numel], ws)
        positive[numel:] = False
        out.copy_(_gather_bits(positive))
        return
    positive = matrix.reshape(*lead, numel) > 0
    if nbytes * 8 != numel:
        padded = torch.zeros(*lead, nbytes * 8, dtype=torch.bool, device=matrix.device)
        padded[..., :numel] = positive
        positive = padded
    out.copy_(_gather_bits(positive))


def _gather_bits(positive: torch.Tensor) -> torch.Tensor:
    """Each 8 ``bool`` bytes as one byte's bits, in an ``int64`` whose low byte holds them. In
    place on the bytes' own storage, except under ``torch.compile``, whose functionalization
    loses in-place writes through a dtype view (it would store the bools themselves)."""
    words = positive.view(torch.uint8).view(torch.int64)
    if torch.compiler.is_compiling():
        return (words * _MAGIC) >> 56
    return words.mul_(_MAGIC).bitwise_right_shift_(56)


def positive_into(matrix: torch.Tensor, out: torch.Tensor, ws) -> None:
    """``out[...] = matrix > 0`` for a ``bool`` ``out``. On CPU, comparing into a float scratch
    buffer and converting float → bool is several times faster than comparing into ``bool``."""
    if matrix.device.type != "cpu" or not matrix.is_floating_point():
        torch.gt(matrix, 0, out=out)
        return
    tmp = ws.get("gt", matrix.numel(), matrix.dtype, matrix.device).view(matrix.shape)
    torch.gt(matrix, 0, out=tmp)
    out.copy_(tmp)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
