// Fused SMMF step for CPU parameters (fp32, bf16, fp16), registered as the torch operator
// smmf_plan::fused_step_ and built on first use by smmf_plan/optim/_cpp.py with
// torch.utils.cpp_extension.load.
//
// One sweep per parameter: for every element of the square-matricized (n, m) matrix it reads the
// gradient and the parameter, decompresses the first moment (sign bit * r_i * c_j), updates both
// moments, writes the parameter and the new sign bit, and accumulates the row and column sums that
// become the next factors.  Traffic per element: 4+4+4 bytes (fp32 G read, W read, W write) + one
// sign bit read and written; the factors are small and stay in cache.
//
// Accuracy.  The new factors are sums over a row (m elements) or a column (n elements).  They are
// accumulated in float for at most 16 chunks of 8 lanes (rows) or 16 rows (columns) and then in
// double, so their error does not grow with n and m (a float running sum over 2047 elements
// misplaces r and c by ~1e-5 relative, and every element whose M is that close to zero flips its
// sign bit, which the next step amplifies into a full +-r*c: that was the fused kernel's 3e-3
// error).  Column sums from the threads are added in a fixed order, so results are deterministic
// for a given thread count.
//
// The AVX2 path and the portable path (any CPU; auto-vectorised where the compiler can) perform
// the same IEEE operations in the same order (no fused multiply-add: the build uses
// -ffp-contract=off), so they give bit-identical results.

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#ifndef SMMF_KERNEL_ONLY  // (defined by a stand-alone benchmark of the row kernels)
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SMMF_X86 1
#else
#define SMMF_X86 0
#endif

namespace {

constexpr int kLanes = 8;         // elements per chunk (one AVX2 register of floats)
constexpr int kFlushChunks = 16;  // row sums: float lanes are flushed into double every 16 chunks
constexpr int64_t kRowGroup = 16;  // column sums: float partials are flushed every 16 rows
// Software prefetch distance, in elements, for the parameter and gradient streams.  A row of the
// square-matricized matrix is often one 4 KiB page (m = 1024 fp32) and the rows_avx2_aligned
// loop walks four streams at once (two rows of W and G); hardware prefetchers stop at page
// boundaries, so without this every row started with cache misses: on a 2-core EPYC, ResNet-50's
// step took ~20% longer (and GPT-2's ~8%).  Measured best at 2048 (8 KiB of fp32) among
// 256..4096; prefetching past a tensor's end is harmless (a prefetch never faults).
constexpr int64_t kPrefetch = 2048;

// Prefetch the cache lines kPrefetch elements ahead of W + k and G + k (once per 16 elements).
template <typename T>
inline void prefetch_ahead(const T* w, const T* g, int64_t k) {
  // addresses as integers: a pointer past the end of its array is not formed
  constexpr uintptr_t ahead = kPrefetch * sizeof(T);
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(w + k) + ahead), 0, 3);
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(g + k) + ahead), 0, 3);
}

struct Hyper {
  bool first;     // with a first moment (beta is not None)
  bool packed;    // 1-bit signs (else one bool byte per element)
  float b1, a1;   // beta1_t and 1 - beta1_t
  float b2, a2;   // beta2_t and 1 - beta2_t
  float lr, eps;
  float decay;    // decoupled weight decay: W <- W * decay before the update (1 = none)
  float coupled;  // coupled weight decay: G <- G + coupled * W (0 = none)
};

enum class Dtype { Float, BFloat16, Half };

struct Param {
  void* w;
  const void* g;
  float* rm;
  float* cm;
  uint8_t* sign;
  float* rv;
  float* cv;
  int64_t n, m;
  Dtype dtype;
};

// ---------------------------------------------------------------- element loads and stores
inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(c10::Half x) { return static_cast<float>(x); }
template <typename T> inline T from_float(float x) { return static_cast<T>(x); }

// Sign masks: lane l of row b is -0.0f (only the sign bit) where bit l of b is clear, +0.0f where
// it is set; XOR-ing |r_i c_j| with it decompresses the first moment's sign.
struct SignMasks {
  alignas(32) uint32_t v[256][8];
  SignMasks() {
    for (int b = 0; b < 256; ++b)
      for (int l = 0; l < 8; ++l) v[b][l] = ((b >> l) & 1) ? 0u : 0x80000000u;
  }
};
const SignMasks kSignMasks;

// 256-entry table: byte b -> eight bytes holding its bits (bool sign storage)
struct BitBytes {
  uint64_t v[256];
  BitBytes() {
    for (int b = 0; b < 256; ++b) {
      uint64_t x = 0;
      for (int k = 0; k < 8; ++k) x |= (uint64_t)((b >> k) & 1) << (8 * k);
      v[b] = x;
    }
  }
};
const BitBytes kBitBytes;

inline float xor_sign(float x, uint32_t mask) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u ^= mask;
  std::memcpy(&x, &u, 4);
  return x;
}

// Bits [off, off + cnt) (cnt <= 8) of the sign storage, least significant first.
template <bool PACKED>
inline uint32_t read_bits(const uint8_t* __restrict s, int64_t off, int cnt) {
  if (PACKED) {
    const int64_t b = off >> 3;
    const int sh = (int)(off & 7);
    uint32_t w = s[b];
    if (sh + cnt > 8) w |= (uint32_t)s[b + 1] << 8;
    return (w >> sh) & ((1u << cnt) - 1u);
  }
  if (cnt == 8) {  // eight bool bytes (0 or 1): byte k's bit lands on bit 56 + k
    uint64_t x;
    std::memcpy(&x, s + off, 8);
    return (uint32_t)(((x & 0x0101010101010101ULL) * 0x0102040810204080ULL) >> 56);
  }
  uint32_t bits = 0;
  for (int k = 0; k < cnt; ++k) bits |= (uint32_t)(s[off + k] != 0) << k;
  return bits;
}

// Sequential writer of sign bits over one task, which starts on a byte boundary and owns every
// byte it writes; a byte is written once its eight bits are known, after it has been read.
template <bool PACKED>
struct BitWriter {
  uint8_t* __restrict s;
  int64_t off;       // next element (bool storage) or next byte (packed)
  uint32_t acc = 0;  // pending bits (packed)
  int nacc = 0;
  BitWriter(uint8_t* sign, int64_t first) : s(sign), off(PACKED ? first >> 3 : first) {}
  inline void put(uint32_t bits, int cnt) {
    if (PACKED) {
      acc |= bits << nacc;
      nacc += cnt;
      while (nacc >= 8) {
        s[off++] = (uint8_t)acc;
        acc >>= 8;
        nacc -= 8;
      }
    } else if (cnt == 8) {
      uint64_t x = kBitBytes.v[bits];
      std::memcpy(s + off, &x, 8);
      off += 8;
    } else {
      for (int k = 0; k < cnt; ++k) s[off++] = (uint8_t)((bits >> k) & 1u);
    }
  }
  inline void flush() {  // the last byte of a parameter: its unused high bits are 0
    if (PACKED && nacc > 0) s[off++] = (uint8_t)acc;
  }
};

// Column sums of one task: float partials over a group of rows, flushed into double partials.
struct ColAcc {
  float* pm;   // float partials of |M| and V, m each (pm unused without a first moment)
  float* pv;
  double* dm;  // double partials, m each
  double* dv;
};

// Everything a row kernel reads, hoisted into restrict-qualified locals so that the byte stores
// of the sign bits do not force the compiler to reload pointers and constants.
template <typename T>
struct View {
  T* __restrict w;
  const T* __restrict g;
  const float* __restrict cm;
  const float* __restrict cv;
  float* __restrict pm;
  float* __restrict pv;
  View(const Param& P, ColAcc& acc)
      : w(static_cast<T*>(P.w)), g(static_cast<const T*>(P.g)), cm(P.cm), cv(P.cv), pm(acc.pm), pv(acc.pv) {}
};

// One element, portable (the tail of every row in the AVX2 path; the operations and their order
// match the AVX2 body exactly).
template <typename T, bool FIRST, bool WD>
inline void element(const Hyper& h, const View<T>& x, int64_t k, int64_t j, float rmb1, float rvb2,
                    uint32_t mask, float& abs_m, float& v_out, bool& pos) {
  float w = to_float(x.w[k]);
  float g = to_float(x.g[k]);
  if (WD) g = g + h.coupled * w;
  const float v = rvb2 * x.cv[j] + h.a2 * (g * g);
  float num = g;
  if (FIRST) {
    const float mm = xor_sign(rmb1 * x.cm[j], mask) + h.a1 * g;
    num = mm;
    pos = mm > 0.f;
    abs_m = std::fabs(mm);
  }
  const float upd = num / (std::sqrt(v) + h.eps);
  if (WD) w = w * h.decay;
  w = w - h.lr * upd;
  x.w[k] = from_float<T>(w);
  v_out = v;
}

// Flush the float partial column sums of a group of rows into the double ones.
inline void flush_columns(ColAcc& acc, int64_t m, bool first) {
  for (int64_t j = 0; j < m; ++j) {
    if (first) { acc.dm[j] += (double)acc.pm[j]; acc.pm[j] = 0.f; }
    acc.dv[j] += (double)acc.pv[j];
    acc.pv[j] = 0.f;
  }
}

// Rows [r0, r1) of one parameter, portable code.  Writes the row sums of |M| and V into rm/rv
// (the old values are read first) and adds the column sums into acc.  Row sums: 8 float lanes,
// flushed into 8 double lanes every kFlushChunks chunks and at the end of the full chunks; the
// tail goes straight into the double lanes; the sum is the double lanes added in order 0..7.
template <typename T, bool FIRST, bool PACKED, bool WD>
void rows_generic(const Param& P, const Hyper& h, int64_t r0, int64_t r1, ColAcc& acc) {
  const int64_t m = P.m;
  const View<T> x(P, acc);
  const uint8_t* __restrict sign_in = P.sign;
  BitWriter<PACKED> writer(P.sign, r0 * m);
  const int64_t m8 = m - m % kLanes;
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t base = i * m;
    const float rmb1 = FIRST ? P.rm[i] * h.b1 : 0.f;
    const float rvb2 = P.rv[i] * h.b2;
    float lm[kLanes] = {0}, lv[kLanes] = {0};
    double dm[kLanes] = {0}, dv[kLanes] = {0};
    int chunks = 0;
    for (int64_t j = 0; j < m; j += kLanes) {
      const int cnt = (int)std::min<int64_t>(kLanes, m - j);
      if ((j & 15) == 0) prefetch_ahead(x.w, x.g, base + j);
      const uint32_t bits = FIRST ? read_bits<PACKED>(sign_in, base + j, cnt) : 0u;
      uint32_t out = 0;
      for (int l = 0; l < cnt; ++l) {
        float am = 0.f, v;
        bool pos = false;
        element<T, FIRST, WD>(h, x, base + j + l, j + l, rmb1, rvb2, kSignMasks.v[bits][l], am, v, pos);
        out |= (uint32_t)pos << l;
        if (FIRST) x.pm[j + l] += am;
        x.pv[j + l] += v;
        if (j < m8) {
          if (FIRST) lm[l] += am;
          lv[l] += v;
        } else {
          if (FIRST) dm[l] += am;
          dv[l] += v;
        }
      }
      if (FIRST) writer.put(out, cnt);
      if (j < m8 && (++chunks == kFlushChunks || j + kLanes >= m8)) {
        for (int l = 0; l < kLanes; ++l) {
          if (FIRST) { dm[l] += (double)lm[l]; lm[l] = 0.f; }
          dv[l] += (double)lv[l];
          lv[l] = 0.f;
        }
        chunks = 0;
      }
    }
    double sm = 0.0, sv = 0.0;
    for (int l = 0; l < kLanes; ++l) { sm += dm[l]; sv += dv[l]; }
    if (FIRST) P.rm[i] = (float)sm;
    P.rv[i] = (float)sv;
    if ((i - r0) % kRowGroup == kRowGroup - 1 || i + 1 == r1) flush_columns(acc, m, FIRST);
  }
  if (FIRST) writer.flush();
}

#if SMMF_X86
#define SMMF_AVX2 __attribute__((target("avx2,f16c")))

SMMF_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
SMMF_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
}
SMMF_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
SMMF_AVX2 inline void store8(float* p, __m256 x) { _mm256_storeu_ps(p, x); }
SMMF_AVX2 inline void store8(c10::BFloat16* p, __m256 x) {
  // round to nearest even, NaN -> 0x7FC0 (c10::BFloat16's rule)
  __m256i u = _mm256_castps_si256(x);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
SMMF_AVX2 inline void store8(c10::Half* p, __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}

SMMF_AVX2 inline void flush_columns_avx2(ColAcc& acc, int64_t m, bool first) {
  int64_t c = 0;
  for (; c + 4 <= m; c += 4) {
    if (first) {
      _mm256_storeu_pd(acc.dm + c, _mm256_add_pd(_mm256_loadu_pd(acc.dm + c), _mm256_cvtps_pd(_mm_loadu_ps(acc.pm + c))));
      _mm_storeu_ps(acc.pm + c, _mm_setzero_ps());
    }
    _mm256_storeu_pd(acc.dv + c, _mm256_add_pd(_mm256_loadu_pd(acc.dv + c), _mm256_cvtps_pd(_mm_loadu_ps(acc.pv + c))));
    _mm_storeu_ps(acc.pv + c, _mm_setzero_ps());
  }
  for (; c < m; ++c) {
    if (first) { acc.dm[c] += (double)acc.pm[c]; acc.pm[c] = 0.f; }
    acc.dv[c] += (double)acc.pv[c];
    acc.pv[c] = 0.f;
  }
}

// One 8-element chunk of one row for rows_avx2_aligned: the operations of element(), in order.
struct Chunk {
  __m256 am, v;
};

template <typename T, bool FIRST, bool WD>
SMMF_AVX2 inline __m256 chunk_update(T* __restrict W, const T* __restrict G, int64_t k, __m256 cv, __m256 cm,
                                     __m256 rmb1, __m256 rvb2, __m256 mask, const Hyper& h, __m256 a1, __m256 a2,
                                     __m256 lr, __m256 eps, __m256& v_out, __m256& mm_out) {
  __m256 w = load8(W + k);
  __m256 g = load8(G + k);
  if (WD) g = _mm256_add_ps(g, _mm256_mul_ps(_mm256_set1_ps(h.coupled), w));
  const __m256 v = _mm256_add_ps(_mm256_mul_ps(rvb2, cv), _mm256_mul_ps(a2, _mm256_mul_ps(g, g)));
  __m256 num = g;
  if (FIRST) {
    num = _mm256_add_ps(_mm256_xor_ps(_mm256_mul_ps(rmb1, cm), mask), _mm256_mul_ps(a1, g));
    mm_out = num;
  }
  const __m256 upd = _mm256_div_ps(num, _mm256_add_ps(_mm256_sqrt_ps(v), eps));
  if (WD) w = _mm256_mul_ps(w, _mm256_set1_ps(h.decay));
  w = _mm256_sub_ps(w, _mm256_mul_ps(lr, upd));
  store8(W + k, w);
  v_out = v;
  return w;
}

inline uint32_t sign_byte_bools(const uint8_t* __restrict s) {
  uint64_t x;  // eight bool bytes (0 or 1): byte k's bit lands on bit 56 + k
  std::memcpy(&x, s, 8);
  return (uint32_t)(((x & 0x0101010101010101ULL) * 0x0102040810204080ULL) >> 56);
}

// Rows [r0, r1) where m % 8 == 0 (every row starts on a sign byte), two rows at a time: the
// factor columns and the column partials are loaded once per pair, and sign bits are whole
// bytes.  Same operations, in the same order, as rows_generic (the column partial adds row i,
// then row i + 1).
template <typename T, bool FIRST, bool PACKED, bool WD>
SMMF_AVX2 void rows_avx2_aligned(const Param& P, const Hyper& h, int64_t r0, int64_t r1, ColAcc& acc) {
  const int64_t m = P.m;
  const View<T> x(P, acc);
  T* __restrict W = x.w;
  const T* __restrict G = x.g;
  const float* __restrict CM = x.cm;
  const float* __restrict CV = x.cv;
  float* __restrict PM = x.pm;
  float* __restrict PV = x.pv;
  uint8_t* __restrict S = P.sign;
  const __m256 a1 = _mm256_set1_ps(h.a1), a2 = _mm256_set1_ps(h.a2);
  const __m256 lr = _mm256_set1_ps(h.lr), eps = _mm256_set1_ps(h.eps);
  const __m256 signbit = _mm256_set1_ps(-0.f), zero = _mm256_setzero_ps();
  const float* masks = reinterpret_cast<const float*>(kSignMasks.v);
  for (int64_t i = r0; i < r1; i += 2) {
    const int rows = i + 1 < r1 ? 2 : 1;
    alignas(32) double dm[2][kLanes] = {}, dv[2][kLanes] = {};
    __m256 rmb1[2], rvb2[2];
    for (int r = 0; r < 2; ++r) {
      const int64_t row = i + (r < rows ? r : 0);
      rmb1[r] = _mm256_set1_ps(FIRST ? P.rm[row] * h.b1 : 0.f);
      rvb2[r] = _mm256_set1_ps(P.rv[row] * h.b2);
    }
    const int64_t base0 = i * m, base1 = base0 + m;
    for (int64_t j = 0; j < m;) {
      const int64_t stop = std::min(m, j + kFlushChunks * kLanes);
      __m256 lm0 = zero, lv0 = zero, lm1 = zero, lv1 = zero;
      for (; j < stop; j += kLanes) {
        const __m256 cv = _mm256_loadu_ps(CV + j);
        const __m256 cm = FIRST ? _mm256_loadu_ps(CM + j) : zero;
        __m256 v0, mm0 = zero, v1, mm1 = zero;
        uint32_t bits0 = 0, bits1 = 0;
        if ((j & 15) == 0) {
          prefetch_ahead(W, G, base0 + j);
          if (rows == 2) prefetch_ahead(W, G, base1 + j);
        }
        if (FIRST) {
          bits0 = PACKED ? S[(base0 + j) >> 3] : sign_byte_bools(S + base0 + j);
          if (rows == 2) bits1 = PACKED ? S[(base1 + j) >> 3] : sign_byte_bools(S + base1 + j);
        }
        chunk_update<T, FIRST, WD>(W, G, base0 + j, cv, cm, rmb1[0], rvb2[0], _mm256_load_ps(masks + 8 * bits0), h,
                                   a1, a2, lr, eps, v0, mm0);
        __m256 pv = _mm256_add_ps(_mm256_loadu_ps(PV + j), v0);
        lv0 = _mm256_add_ps(lv0, v0);
        __m256 am0 = zero, am1 = zero, pm = zero;
        if (FIRST) {
          am0 = _mm256_andnot_ps(signbit, mm0);
          lm0 = _mm256_add_ps(lm0, am0);
          pm = _mm256_add_ps(_mm256_loadu_ps(PM + j), am0);
          const uint32_t out0 = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(mm0, zero, _CMP_GT_OQ));
          if (PACKED) S[(base0 + j) >> 3] = (uint8_t)out0;
          else { const uint64_t b = kBitBytes.v[out0]; std::memcpy(S + base0 + j, &b, 8); }
        }
        if (rows == 2) {
          chunk_update<T, FIRST, WD>(W, G, base1 + j, cv, cm, rmb1[1], rvb2[1], _mm256_load_ps(masks + 8 * bits1),
                                     h, a1, a2, lr, eps, v1, mm1);
          pv = _mm256_add_ps(pv, v1);
          lv1 = _mm256_add_ps(lv1, v1);
          if (FIRST) {
            am1 = _mm256_andnot_ps(signbit, mm1);
            lm1 = _mm256_add_ps(lm1, am1);
            pm = _mm256_add_ps(pm, am1);
            const uint32_t out1 = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(mm1, zero, _CMP_GT_OQ));
            if (PACKED) S[(base1 + j) >> 3] = (uint8_t)out1;
            else { const uint64_t b = kBitBytes.v[out1]; std::memcpy(S + base1 + j, &b, 8); }
          }
        }
        _mm256_storeu_ps(PV + j, pv);
        if (FIRST) _mm256_storeu_ps(PM + j, pm);
      }
      // flush the float lanes into the double lanes (every kFlushChunks chunks and at the end)
      const __m256 lanes[4] = {lm0, lv0, lm1, lv1};
      for (int r = 0; r < rows; ++r) {
        const __m256 lm = lanes[2 * r], lv = lanes[2 * r + 1];
        if (FIRST) {
          _mm256_store_pd(dm[r], _mm256_add_pd(_mm256_load_pd(dm[r]), _mm256_cvtps_pd(_mm256_castps256_ps128(lm))));
          _mm256_store_pd(dm[r] + 4, _mm256_add_pd(_mm256_load_pd(dm[r] + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(lm, 1))));
        }
        _mm256_store_pd(dv[r], _mm256_add_pd(_mm256_load_pd(dv[r]), _mm256_cvtps_pd(_mm256_castps256_ps128(lv))));
        _mm256_store_pd(dv[r] + 4, _mm256_add_pd(_mm256_load_pd(dv[r] + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(lv, 1))));
      }
    }
    for (int r = 0; r < rows; ++r) {
      double sm = 0.0, sv = 0.0;
      for (int l = 0; l < kLanes; ++l) { sm += dm[r][l]; sv += dv[r][l]; }
      if (FIRST) P.rm[i + r] = (float)sm;
      P.rv[i + r] = (float)sv;
    }
    // column partials are flushed every kRowGroup rows (pairs never straddle a group: both even)
    const int64_t last = i + rows - 1;
    if ((last - r0) % kRowGroup == kRowGroup - 1 || last + 1 == r1) flush_columns_avx2(acc, m, FIRST);
  }
}

// Rows [r0, r1), AVX2: the operations of rows_generic in the same order, eight elements at a time.
template <typename T, bool FIRST, bool PACKED, bool WD>
SMMF_AVX2 void rows_avx2(const Param& P, const Hyper& h, int64_t r0, int64_t r1, ColAcc& acc) {
  const int64_t m = P.m;
  if (m % kLanes == 0) return rows_avx2_aligned<T, FIRST, PACKED, WD>(P, h, r0, r1, acc);
  const View<T> x(P, acc);
  T* __restrict W = x.w;
  const T* __restrict G = x.g;
  const float* __restrict CM = x.cm;
  const float* __restrict CV = x.cv;
  float* __restrict PM = x.pm;
  float* __restrict PV = x.pv;
  const uint8_t* __restrict sign_in = P.sign;
  BitWriter<PACKED> writer(P.sign, r0 * m);
  const int64_t m8 = m - m % kLanes;
  const __m256 a1 = _mm256_set1_ps(h.a1), a2 = _mm256_set1_ps(h.a2);
  const __m256 lr = _mm256_set1_ps(h.lr), eps = _mm256_set1_ps(h.eps);
  const __m256 signbit = _mm256_set1_ps(-0.f), zero = _mm256_setzero_ps();
  alignas(32) double dm[kLanes], dv[kLanes];
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t base = i * m;
    const float rmb1_s = FIRST ? P.rm[i] * h.b1 : 0.f;
    const float rvb2_s = P.rv[i] * h.b2;
    const __m256 rmb1 = _mm256_set1_ps(rmb1_s), rvb2 = _mm256_set1_ps(rvb2_s);
    __m256 lm = zero, lv = zero;
    __m256d dm0 = _mm256_setzero_pd(), dm1 = dm0, dv0 = dm0, dv1 = dm0;
    int64_t j = 0;
    while (j < m8) {
      const int64_t stop = std::min(m8, j + kFlushChunks * kLanes);
      for (; j < stop; j += kLanes) {
        const int64_t k = base + j;
        if ((j & 15) == 0) prefetch_ahead(W, G, k);
        __m256 w = load8(W + k);
        __m256 g = load8(G + k);
        if (WD) g = _mm256_add_ps(g, _mm256_mul_ps(_mm256_set1_ps(h.coupled), w));
        const __m256 v = _mm256_add_ps(_mm256_mul_ps(rvb2, _mm256_loadu_ps(CV + j)), _mm256_mul_ps(a2, _mm256_mul_ps(g, g)));
        __m256 num = g;
        if (FIRST) {
          const uint32_t bits = read_bits<PACKED>(sign_in, k, 8);
          const __m256 mask = _mm256_load_ps(reinterpret_cast<const float*>(kSignMasks.v[bits]));
          const __m256 mm = _mm256_add_ps(_mm256_xor_ps(_mm256_mul_ps(rmb1, _mm256_loadu_ps(CM + j)), mask),
                                          _mm256_mul_ps(a1, g));
          num = mm;
          writer.put((uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(mm, zero, _CMP_GT_OQ)), 8);
          const __m256 am = _mm256_andnot_ps(signbit, mm);
          lm = _mm256_add_ps(lm, am);
          _mm256_storeu_ps(PM + j, _mm256_add_ps(_mm256_loadu_ps(PM + j), am));
        }
        const __m256 upd = _mm256_div_ps(num, _mm256_add_ps(_mm256_sqrt_ps(v), eps));
        if (WD) w = _mm256_mul_ps(w, _mm256_set1_ps(h.decay));
        w = _mm256_sub_ps(w, _mm256_mul_ps(lr, upd));
        store8(W + k, w);
        lv = _mm256_add_ps(lv, v);
        _mm256_storeu_ps(PV + j, _mm256_add_ps(_mm256_loadu_ps(PV + j), v));
      }
      if (FIRST) {
        dm0 = _mm256_add_pd(dm0, _mm256_cvtps_pd(_mm256_castps256_ps128(lm)));
        dm1 = _mm256_add_pd(dm1, _mm256_cvtps_pd(_mm256_extractf128_ps(lm, 1)));
        lm = zero;
      }
      dv0 = _mm256_add_pd(dv0, _mm256_cvtps_pd(_mm256_castps256_ps128(lv)));
      dv1 = _mm256_add_pd(dv1, _mm256_cvtps_pd(_mm256_extractf128_ps(lv, 1)));
      lv = zero;
    }
    _mm256_store_pd(dm, dm0);
    _mm256_store_pd(dm + 4, dm1);
    _mm256_store_pd(dv, dv0);
    _mm256_store_pd(dv + 4, dv1);
    if (j < m) {  // tail: the portable element, straight into the double lanes
      const int cnt = (int)(m - j);
      const uint32_t bits = FIRST ? read_bits<PACKED>(sign_in, base + j, cnt) : 0u;
      uint32_t out = 0;
      for (int l = 0; l < cnt; ++l) {
        float am = 0.f, v;
        bool pos = false;
        element<T, FIRST, WD>(h, x, base + j + l, j + l, rmb1_s, rvb2_s, kSignMasks.v[bits][l], am, v, pos);
        out |= (uint32_t)pos << l;
        if (FIRST) { dm[l] += am; PM[j + l] += am; }
        dv[l] += v;
        PV[j + l] += v;
      }
      if (FIRST) writer.put(out, cnt);
    }
    double sm = 0.0, sv = 0.0;
    for (int l = 0; l < kLanes; ++l) { sm += dm[l]; sv += dv[l]; }
    if (FIRST) P.rm[i] = (float)sm;
    P.rv[i] = (float)sv;
    if ((i - r0) % kRowGroup == kRowGroup - 1 || i + 1 == r1) flush_columns_avx2(acc, m, FIRST);
  }
  if (FIRST) writer.flush();
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return ok;
}
#endif

template <typename T, bool FIRST, bool PACKED, bool WD>
void rows_t(const Param& P, const Hyper& h, int64_t r0, int64_t r1, ColAcc& acc, bool vector) {
#if SMMF_X86
  if (vector && cpu_has_avx2()) return rows_avx2<T, FIRST, PACKED, WD>(P, h, r0, r1, acc);
#endif
  (void)vector;
  rows_generic<T, FIRST, PACKED, WD>(P, h, r0, r1, acc);
}

template <typename T>
void rows(const Param& P, const Hyper& h, int64_t r0, int64_t r1, ColAcc& acc, bool vector) {
  const bool wd = h.decay != 1.f || h.coupled != 0.f;
  const int key = (h.first ? 4 : 0) | (h.packed ? 2 : 0) | (wd ? 1 : 0);
  switch (key) {
    case 0: return rows_t<T, false, false, false>(P, h, r0, r1, acc, vector);
    case 1: return rows_t<T, false, false, true>(P, h, r0, r1, acc, vector);
    case 2: return rows_t<T, false, true, false>(P, h, r0, r1, acc, vector);
    case 3: return rows_t<T, false, true, true>(P, h, r0, r1, acc, vector);
    case 4: return rows_t<T, true, false, false>(P, h, r0, r1, acc, vector);
    case 5: return rows_t<T, true, false, true>(P, h, r0, r1, acc, vector);
    case 6: return rows_t<T, true, true, false>(P, h, r0, r1, acc, vector);
    default: return rows_t<T, true, true, true>(P, h, r0, r1, acc, vector);
  }
}

void rows_any(const Param& P, const Hyper& h, int64_t r0, int64_t r1, ColAcc& acc, bool vector) {
  switch (P.dtype) {
    case Dtype::Float: return rows<float>(P, h, r0, r1, acc, vector);
    case Dtype::BFloat16: return rows<c10::BFloat16>(P, h, r0, r1, acc, vector);
    case Dtype::Half: return rows<c10::Half>(P, h, r0, r1, acc, vector);
  }
}

// New column factor from the per-task double partials (added in task order), then the reference's
// normalisation: the shorter side's vector divided by its sum unless that sum is 0 (square
// matricization gives n >= m, so it is always the column vector).
void finish(float* R, float* C, int64_t n, int64_t m, const double* parts, int64_t tasks, int64_t stride) {
  for (int64_t j = 0; j < m; ++j) {
    double s = 0.0;
    for (int64_t t = 0; t < tasks; ++t) s += parts[t * stride + j];
    C[j] = (float)s;
  }
  float* vec = n < m ? R : C;
  const int64_t len = n < m ? n : m;
  double tot = 0.0;
  for (int64_t j = 0; j < len; ++j) tot += (double)vec[j];
  const float ftot = (float)tot;
  if (ftot != 0.f)
    for (int64_t j = 0; j < len; ++j) vec[j] = vec[j] / ftot;
}

#ifndef SMMF_KERNEL_ONLY
Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::Float;
    case at::kBFloat16: return Dtype::BFloat16;
    case at::kHalf: return Dtype::Half;
    default: TORCH_CHECK(false, "smmf_plan::fused_step_: unsupported dtype ", t.scalar_type(), " (fp32, bf16, fp16)");
  }
}

void fused_step_(at::TensorList params, at::TensorList grads, at::TensorList row_m, at::TensorList col_m,
                 at::TensorList sign, at::TensorList row_v, at::TensorList col_v, at::IntArrayRef rows_,
                 at::IntArrayRef cols_, at::IntArrayRef tasks_, const at::Tensor& scratch, bool packed, double beta1, double beta2,
                 double lr, double eps, double decay, double coupled, bool vector) {
  const size_t np = params.size();
  const bool first = !row_m.empty();
  TORCH_CHECK(grads.size() == np && row_v.size() == np && col_v.size() == np && rows_.size() == np &&
                  cols_.size() == np && tasks_.size() == np && (!first || (col_m.size() == np && sign.size() == np)),
              "smmf_plan::fused_step_: argument lists differ in length");
  TORCH_CHECK(scratch.device().is_cpu() && scratch.scalar_type() == at::kDouble && scratch.is_contiguous(),
              "smmf_plan::fused_step_: scratch must be a contiguous CPU float64 tensor");
  Hyper h;
  h.first = first;
  h.packed = packed;
  h.b1 = (float)beta1;
  h.a1 = (float)(1.0 - beta1);
  h.b2 = (float)beta2;
  h.a2 = (float)(1.0 - beta2);
  h.lr = (float)lr;
  h.eps = (float)eps;
  h.decay = (float)decay;
  h.coupled = (float)coupled;
  double* scr = scratch.data_ptr<double>();
  const int64_t scr_len = scratch.numel();
  for (size_t q = 0; q < np; ++q) {
    const at::Tensor& p = params[q];
    const at::Tensor& g = grads[q];
    const int64_t n = rows_[q], m = cols_[q];
    TORCH_CHECK(p.device().is_cpu() && g.device().is_cpu() && p.is_contiguous() && g.is_contiguous() &&
                    p.scalar_type() == g.scalar_type() && p.numel() == n * m && g.numel() == n * m,
                "smmf_plan::fused_step_: parameter ", q, " must be a contiguous CPU tensor of ", n, "x", m,
                " elements with a gradient of the same dtype and size");
    auto vec_ok = [&](const at::Tensor& t, int64_t len) {
      return t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == len && t.device().is_cpu();
    };
    TORCH_CHECK(vec_ok(row_v[q], n) && vec_ok(col_v[q], m) && (!first || (vec_ok(row_m[q], n) && vec_ok(col_m[q], m))),
                "smmf_plan::fused_step_: factors of parameter ", q, " must be contiguous fp32 vectors of ", n,
                " and ", m, " elements");
    if (first) {
      const at::Tensor& s = sign[q];
      const int64_t want = packed ? (n * m + 7) / 8 : n * m;
      TORCH_CHECK(s.is_contiguous() && s.numel() == want && s.element_size() == 1,
                  "smmf_plan::fused_step_: sign of parameter ", q, " must hold ", want, " bytes");
    }
    if (n * m == 0) continue;
    Param P{p.data_ptr(), g.data_ptr(), first ? row_m[q].data_ptr<float>() : nullptr,
            first ? col_m[q].data_ptr<float>() : nullptr,
            first ? static_cast<uint8_t*>(sign[q].data_ptr()) : nullptr, row_v[q].data_ptr<float>(),
            col_v[q].data_ptr<float>(), n, m, dtype_of(p)};
    // tasks (chosen by the caller, smmf_plan.optimizers.smmf.cpu_tasks, up to 4 per thread):
    // contiguous runs of kRowGroup-row groups (so a task starts on a sign byte and on a column
    // flush).  Each task's column partials take 3 mp doubles of scratch, mp = m rounded up to 16
    // (64-byte aligned rows): double sums of |M| and of V, then the two float partials.
    const int64_t groups = (n + kRowGroup - 1) / kRowGroup;
    const int64_t tasks = tasks_[q];
    const int64_t mp = (m + 15) / 16 * 16;
    TORCH_CHECK(tasks >= 1 && tasks <= groups, "smmf_plan::fused_step_: parameter ", q, " cannot be split into ",
                tasks, " tasks of 8-row groups");
    TORCH_CHECK(scr_len >= 3 * mp * tasks, "smmf_plan::fused_step_: scratch holds ", scr_len, " doubles, needs ",
                3 * mp * tasks);
    std::fill(scr, scr + tasks * 3 * mp, 0.0);
    auto run = [&](int64_t t) {
      const int64_t r0 = std::min(n, groups * t / tasks * kRowGroup);
      const int64_t r1 = std::min(n, groups * (t + 1) / tasks * kRowGroup);
      double* base = scr + t * 3 * mp;
      float* floats = reinterpret_cast<float*>(base + 2 * mp);
      ColAcc acc{floats, floats + mp, base, base + mp};
      if (r1 > r0) rows_any(P, h, r0, r1, acc, vector);
    };
    if (tasks == 1) {
      run(0);
    } else {
      // Threads claim tasks as they come free (a thread descheduled by other load does not hold
      // up the step); each task sums into its own partials, added in task order afterwards, so
      // the result does not depend on which thread ran what.
      std::atomic<int64_t> next{0};
      const int64_t workers = std::min<int64_t>(tasks, at::get_num_threads());
      at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
        for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) run(t);
      });
    }
    finish(P.rv, P.cv, n, m, scr + mp, tasks, 3 * mp);
    if (first) finish(P.rm, P.cm, n, m, scr, tasks, 3 * mp);
  }
}

#endif  // SMMF_KERNEL_ONLY
}  // namespace

#ifndef SMMF_KERNEL_ONLY
TORCH_LIBRARY(smmf_plan, lib) {
  lib.def(
      "fused_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] row_m, Tensor(c!)[] col_m, "
      "Tensor(d!)[] sign, Tensor(e!)[] row_v, Tensor(f!)[] col_v, int[] rows, int[] cols, int[] tasks, "
      "Tensor(g!) scratch, bool packed, float beta1, float beta2, float lr, float eps, float decay, "
      "float coupled, bool vector=True) -> ()");
}

TORCH_LIBRARY_IMPL(smmf_plan, CPU, lib) { lib.impl("fused_step_", &fused_step_); }
#endif  // SMMF_KERNEL_ONLY
