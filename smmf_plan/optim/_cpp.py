"""Fused CPU kernel for SMMF (C++ with std::thread, built on first use with ``torch.utils.cpp_extension``).

Selection, by ``SMMF_PLAN_KERNEL`` (or :func:`enable`, which overrides it in-process):

* unset / ``auto`` (default): used where a C++ compiler and ninja are on ``PATH``; built once on
  first use (about 40 s, announced on stderr, then cached by torch) — if anything fails the
  optimizer keeps the eager path, so no compiler is ever required;
* ``cpp``: the same, asked for explicitly; ``eager``: never (the pure-PyTorch kernels only).

It handles fp32, contiguous, CPU parameters of the factorized path; everything else stays on the
eager kernels.

One sweep per parameter does decompression, the moment updates, the parameter update and the
compression (row sums in registers, column sums in per-thread buffers, sign bits), so a step moves
about 13 bytes per element (read G and W, write W, one sign bit each way) instead of the ~100 of
the eager path. Work is split between ``torch.get_num_threads()`` plain threads for parameters of 2^18+ elements
(OpenMP is avoided: its spinning workers next to torch's own slowed every other operator down
~10× in testing). Rows are split between threads in multiples of 8 rows, so every thread owns whole
bytes of the packed signs. The arithmetic is the same formula as the reference but the compiler may
contract multiply-adds and the column sums are accumulated in a different order, so results agree
with the eager path to rounding, not bit for bit.
"""

from __future__ import annotations

import os
import threading

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <thread>
#include <cmath>
#include <vector>
#include <cstdint>
#include <cstring>

struct SignLut {
  float v[256][8];
  SignLut() { for (int b = 0; b < 256; ++b) for (int k = 0; k < 8; ++k) v[b][k] = ((b >> k) & 1) ? 1.f : -1.f; }
};
static const SignLut kSignLutHolder;
static const float (*kSignLut)[8] = kSignLutHolder.v;

void smmf_fused(torch::Tensor p, torch::Tensor g, torch::Tensor rm, torch::Tensor cm,
                torch::Tensor sign, torch::Tensor rv, torch::Tensor cv,
                int64_t n, int64_t m, bool first, bool packed,
                double beta1, double beta2, double lr, double eps) {
  float* P = p.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  float* RV = rv.data_ptr<float>();
  float* CV = cv.data_ptr<float>();
  float* RM = first ? rm.data_ptr<float>() : nullptr;
  float* CM = first ? cm.data_ptr<float>() : nullptr;
  uint8_t* S = first ? reinterpret_cast<uint8_t*>(sign.data_ptr()) : nullptr;
  const float b1 = (float)beta1, a1 = (float)(1.0 - beta1);
  const float b2 = (float)beta2, a2 = (float)(1.0 - beta2);
  const float flr = (float)lr, feps = (float)eps;
  const int64_t blocks = (n + 7) / 8;
  // Plain std::threads for large parameters (no OpenMP: a second set of spinning OpenMP workers
  // next to torch's slows every other operator down), the calling thread alone for small ones.
  int nt = (n * m >= (1 << 18)) ? std::max(1, at::get_num_threads()) : 1;
  nt = (int)std::min<int64_t>(nt, blocks);
  std::vector<float> acc_cm(first ? (size_t)nt * m : 0, 0.f), acc_cv((size_t)nt * m, 0.f);
  auto work = [&](int t) {
    const int64_t blk_begin = blocks * t / nt, blk_end = blocks * (t + 1) / nt;
    float* lcm = first ? acc_cm.data() + (size_t)t * m : nullptr;
    float* lcv = acc_cv.data() + (size_t)t * m;
    std::vector<float> sg(m);
    std::vector<uint8_t> pos(m);
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      int64_t i_end = std::min(n, blk * 8 + 8);
      for (int64_t i = blk * 8; i < i_end; ++i) {
        const int64_t base = i * m;
        const float* gr = G + base;
        float* pr = P + base;
        const float rvi = RV[i] * b2;
        float sum_v = 0.f, sum_m = 0.f;
        if (first) {
          const float rmi = RM[i];
          if (packed) {
            float* __restrict__ sgw = sg.data();
            const uint8_t* __restrict__ Sr = S;
            int64_t j = 0;
            for (; j < m && ((base + j) & 7); ++j) {
              int64_t k = base + j;
              sgw[j] = ((Sr[k >> 3] >> (k & 7)) & 1) ? 1.f : -1.f;
            }
            for (; j + 8 <= m; j += 8) std::memcpy(sgw + j, kSignLut[Sr[(base + j) >> 3]], 8 * sizeof(float));
            for (; j < m; ++j) {
              int64_t k = base + j;
              sgw[j] = ((Sr[k >> 3] >> (k & 7)) & 1) ? 1.f : -1.f;
            }
          } else {
            for (int64_t j = 0; j < m; ++j) sg[j] = S[base + j] ? 1.f : -1.f;
          }
          float* sgp = sg.data();
          uint8_t* pp = pos.data();
          #pragma omp simd reduction(+:sum_v, sum_m)
          for (int64_t j = 0; j < m; ++j) {
            float gj = gr[j];
            float mj = (sgp[j] * (rmi * CM[j])) * b1 + a1 * gj;
            float vj = rvi * CV[j] + a2 * gj * gj;
            pr[j] -= flr * (mj / (std::sqrt(vj) + feps));
            pp[j] = mj > 0.f;
            float am = std::fabs(mj);
            sum_m += am; lcm[j] += am;
            sum_v += vj; lcv[j] += vj;
          }
          if (packed) {
            const uint8_t* __restrict__ pr8 = pos.data();
            uint8_t* __restrict__ Sw = S;
            int64_t j = 0;
            for (; j < m && ((base + j) & 7); ++j) {
              int64_t k = base + j;
              uint8_t bit = (uint8_t)(1u << (k & 7));
              Sw[k >> 3] = pr8[j] ? (uint8_t)(Sw[k >> 3] | bit) : (uint8_t)(Sw[k >> 3] & ~bit);
            }
            for (; j + 8 <= m; j += 8) {
              uint64_t w;
              std::memcpy(&w, pr8 + j, 8);
              Sw[(base + j) >> 3] = (uint8_t)((w * 0x0102040810204080ULL) >> 56);
            }
            for (; j < m; ++j) {
              int64_t k = base + j;
              uint8_t bit = (uint8_t)(1u << (k & 7));
              Sw[k >> 3] = pr8[j] ? (uint8_t)(Sw[k >> 3] | bit) : (uint8_t)(Sw[k >> 3] & ~bit);
            }
          } else {
            for (int64_t j = 0; j < m; ++j) S[base + j] = pp[j];
          }
          RM[i] = sum_m;
        } else {
          #pragma omp simd reduction(+:sum_v)
          for (int64_t j = 0; j < m; ++j) {
            float gj = gr[j];
            float vj = rvi * CV[j] + a2 * gj * gj;
            pr[j] -= flr * (gj / (std::sqrt(vj) + feps));
            sum_v += vj; lcv[j] += vj;
          }
        }
        RV[i] = sum_v;
      }
    }
  };
  std::vector<std::thread> helpers;
  for (int t = 1; t < nt; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& th : helpers) th.join();
  // column sums: reduce the per-thread buffers, then normalise like the reference
  auto finish = [&](float* R, float* C, std::vector<float>& acc) {
    for (int64_t j = 0; j < m; ++j) {
      float s = 0.f;
      for (int t = 0; t < nt; ++t) s += acc[(size_t)t * m + j];
      C[j] = s;
    }
    float* vec = (n < m) ? R : C;
    int64_t len = (n < m) ? n : m;
    float tot = 0.f;
    for (int64_t j = 0; j < len; ++j) tot += vec[j];
    if (tot != 0.f) for (int64_t j = 0; j < len; ++j) vec[j] /= tot;
  };
  finish(RV, CV, acc_cv);
  if (first) finish(RM, CM, acc_cm);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("smmf_fused", &smmf_fused, "fused SMMF step for one fp32 parameter");
}
"""

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "module": None, "forced": None}


def _compiler_present() -> bool:
    import shutil

    return shutil.which("ninja") is not None and any(
        shutil.which(c) for c in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++") if c)


def enabled() -> bool:
    """Whether the fused kernel should be tried for this process (see the module docstring)."""
    forced = _state.get("forced")
    if forced is not None:
        return bool(forced)
    mode = os.environ.get("SMMF_PLAN_KERNEL", "auto").strip().lower() or "auto"
    if mode == "eager":
        return False
    return mode == "cpp" or _compiler_present()


def enable(on: bool | None = True) -> bool:
    """Force the fused kernel on or off for this process (``None``: back to ``SMMF_PLAN_KERNEL``);
    returns whether it is in use (it could be built)."""
    _state["forced"] = on
    return bool(on) and module() is not None


def module():
    """The compiled extension, or ``None`` when it cannot be built here."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                import sys

                from torch.utils.cpp_extension import _get_build_directory, load_inline

                name = "smmf_plan_fused_v4"
                built = os.path.isdir(_get_build_directory(name, verbose=False)) and any(
                    f.endswith(".so") for f in os.listdir(_get_build_directory(name, verbose=False)))
                if not built:
                    print("smmf-plan: building the fused SMMF kernel once (about 40 s; "
                          "SMMF_PLAN_KERNEL=eager skips it)", file=sys.stderr, flush=True)
                _state["module"] = load_inline(
                    name=name, cpp_sources=[_SOURCE], functions=None,
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"],
                    verbose=False,
                )
            except Exception:  # no compiler, no ninja, no headers: stay eager
                _state["module"] = None
        return _state["module"]


def usable(p, g, rv) -> bool:
    import torch

    return (p.device.type == "cpu" and p.dtype == torch.float32 and g.dtype == torch.float32
            and rv.dtype == torch.float32 and p.is_contiguous() and g.is_contiguous())
