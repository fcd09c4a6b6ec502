"""Triton kernels of SMMF's fused CUDA step (see :mod:`smmf_plan.optim._triton`, which imports this
module only when a step needs it: importing Triton costs time and it is absent from CPU-only
installs)."""

import triton
import triton.language as tl


@triton.jit
def _ptr(meta, field, ty):
    return tl.load(meta + field).to(tl.pointer_type(ty))


@triton.jit
def sweep(meta_ptr, task_ptr, b1, a1, b2, a2, lr, eps, decay, coupled, DTYPE: tl.constexpr,
          FIRST: tl.constexpr, PACKED: tl.constexpr, WD: tl.constexpr, ROWS: tl.constexpr,
          COLS: tl.constexpr, FIELDS: tl.constexpr):
    pid = tl.program_id(0)
    k = tl.load(task_ptr + 2 * pid)
    blk = tl.load(task_ptr + 2 * pid + 1)
    meta = meta_ptr + k * FIELDS
    n = tl.load(meta + 0)
    m = tl.load(meta + 1)
    ntasks = tl.load(meta + 3)
    w_ptr = _ptr(meta, 4, DTYPE)
    g_ptr = _ptr(meta, 5, DTYPE)
    rv_ptr = _ptr(meta, 9, tl.float32)
    cv_ptr = _ptr(meta, 10, tl.float32)
    col_ptr = _ptr(meta, 11, tl.float32)
    aligned = tl.load(meta + 13) != 0

    rows = blk * ROWS + tl.arange(0, ROWS)
    rmask = rows < n
    rv_old = tl.load(rv_ptr + rows, mask=rmask, other=0.0) * b2
    sum_v = tl.zeros([ROWS], dtype=tl.float64)
    if FIRST:
        rm_ptr = _ptr(meta, 6, tl.float32)
        cm_ptr = _ptr(meta, 7, tl.float32)
        sign_ptr = _ptr(meta, 8, tl.uint8)
        flag_ptr = _ptr(meta, 12, tl.uint8)
        rm_old = tl.load(rm_ptr + rows, mask=rmask, other=0.0) * b1
        sum_m = tl.zeros([ROWS], dtype=tl.float64)
    # column partials of this task: [V (m), total V] then [|M| (m), total |M|]
    cpart_v = col_ptr + blk * (m + 1)
    cpart_m = col_ptr + (ntasks + blk) * (m + 1)
    for j0 in range(0, m, COLS):
        cols = j0 + tl.arange(0, COLS)
        cmask = cols < m
        mask = rmask[:, None] & cmask[None, :]
        flat = rows[:, None].to(tl.int64) * m + cols[None, :]
        w = tl.load(w_ptr + flat, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + flat, mask=mask, other=0.0).to(tl.float32)
        if WD:
            g = g + coupled * w
        cv = tl.load(cv_ptr + cols, mask=cmask, other=0.0)
        v = rv_old[:, None] * cv[None, :] + a2 * (g * g)
        v = tl.where(mask, v, 0.0)
        num = g
        if FIRST:
            cm = tl.load(cm_ptr + cols, mask=cmask, other=0.0)
            if PACKED:
                byte = tl.load(sign_ptr + (flat >> 3), mask=mask, other=0)
                bit = (byte.to(tl.int32) >> (flat & 7).to(tl.int32)) & 1
            else:
                bit = tl.load(sign_ptr + flat, mask=mask, other=0).to(tl.int32)
            mag = rm_old[:, None] * cm[None, :]
            mm = tl.where(bit != 0, mag, -mag) + a1 * g
            mm = tl.where(mask, mm, 0.0)
            num = mm
            pos = (mm > 0.0).to(tl.int32)
            am = tl.abs(mm)
            sum_m += tl.sum(am, axis=1).to(tl.float64)
            tl.store(cpart_m + cols, tl.sum(am, axis=0), mask=cmask)
            if PACKED:
                if aligned:
                    shifts = tl.arange(0, 8)
                    bits3 = tl.reshape(pos, [ROWS, COLS // 8, 8]) << shifts[None, None, :]
                    packed_bytes = tl.sum(bits3, axis=2).to(tl.uint8)
                    bidx = rows[:, None].to(tl.int64) * (m // 8) + (j0 // 8 + tl.arange(0, COLS // 8))[None, :]
                    bmask = rmask[:, None] & ((j0 + 8 * tl.arange(0, COLS // 8)) < m)[None, :]
                    tl.store(sign_ptr + bidx, packed_bytes, mask=bmask)
                else:
                    tl.store(flag_ptr + flat, pos.to(tl.uint8), mask=mask)
            else:
                tl.store(sign_ptr + flat, pos.to(tl.uint8), mask=mask)
        upd = tl.div_rn(num, tl.sqrt_rn(v) + eps)
        if WD:
            w = w * decay
        w = w - lr * upd
        tl.store(w_ptr + flat, w.to(DTYPE), mask=mask)
        sum_v += tl.sum(v, axis=1).to(tl.float64)
        tl.store(cpart_v + cols, tl.sum(v, axis=0), mask=cmask)
    new_rv = sum_v.to(tl.float32)
    tl.store(rv_ptr + rows, new_rv, mask=rmask)
    tl.store(cpart_v + m, tl.sum(new_rv, axis=0))
    if FIRST:
        new_rm = sum_m.to(tl.float32)
        tl.store(rm_ptr + rows, new_rm, mask=rmask)
        tl.store(cpart_m + m, tl.sum(new_rm, axis=0))
        if PACKED:
            if not aligned:  # pack this task's flags (it owns bytes [lo, hi)) once all are written
                tl.debug_barrier()
                lo = (blk * ROWS).to(tl.int64) * m // 8
                end = tl.minimum(blk * ROWS + ROWS, n).to(tl.int64) * m
                hi = (end + 7) // 8
                for b0 in range(lo, hi, COLS):
                    bidx = b0 + tl.arange(0, COLS)
                    e = bidx[:, None] * 8 + tl.arange(0, 8)[None, :]
                    f = tl.load(flag_ptr + e, mask=e < end, other=0).to(tl.int32)
                    byte = tl.sum(f << tl.arange(0, 8)[None, :], axis=1).to(tl.uint8)
                    tl.store(sign_ptr + bidx, byte, mask=bidx < hi)


@triton.jit
def finish(meta_ptr, FIRST: tl.constexpr, ROWS: tl.constexpr, FIELDS: tl.constexpr,
           BLOCK: tl.constexpr):
    k = tl.program_id(0)
    cb = tl.program_id(1)
    meta = meta_ptr + k * FIELDS
    m = tl.load(meta + 1)
    if cb * BLOCK < m:
        ntasks = tl.load(meta + 3)
        col_ptr = _ptr(meta, 11, tl.float32)
        cols = cb * BLOCK + tl.arange(0, BLOCK)
        cmask = cols < m
        for moment in tl.static_range(2 if FIRST else 1):
            base = col_ptr + moment * ntasks * (m + 1)
            acc = tl.zeros([BLOCK], dtype=tl.float64)
            tot = tl.zeros([1], dtype=tl.float64)
            for t in range(0, ntasks):
                acc += tl.load(base + t * (m + 1) + cols, mask=cmask, other=0.0).to(tl.float64)
                tot += tl.load(base + t * (m + 1) + m + tl.zeros([1], dtype=tl.int32)).to(tl.float64)
            total = tl.sum(tot, axis=0).to(tl.float32)
            col = acc.to(tl.float32)
            col = col / tl.where(total == 0.0, 1.0, total)
            out_ptr = _ptr(meta, 10 if moment == 0 else 7, tl.float32)
            tl.store(out_ptr + cols, col, mask=cmask)
