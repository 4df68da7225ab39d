// The AVX-512 (F, BW, DQ, VL) kernels of simd_sort.h: the merge sort of simd_sort_impl.h on 8 x uint64
// and 16 x uint32 lanes, vectorized key loads, and the vectorized matching of a loss's rows.
//
// Only this file is compiled for AVX-512 (target pragma below). It includes no library header after
// the pragma and keeps its code in an anonymous namespace, so no inline function compiled for
// AVX-512 can be shared with (and picked by the linker for) the portable code.
#include "simd_sort.h"

#include <cstdint>
#include <cstring>

// GCC only: Clang ignores `#pragma GCC target` (it then takes the portable radix path).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PDL_EXT_HAVE_AVX512_SORT 1
#include <immintrin.h>
#endif

namespace pdl_ext {
namespace cpu {

#if PDL_EXT_HAVE_AVX512_SORT

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")
// GCC 12's avx512fintrin.h trips -Wuninitialized on its own _mm512_undefined_* helpers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

#include "simd_sort_impl.h"

// 8 lanes of uint64.
struct U64x8 {
  using T = uint64_t;
  using Vec = __m512i;
  static constexpr int L = 8;
  static bool le(T a, T b) { return a <= b; }
  static void enter(T*, int64_t) {}
  static void leave(T*, int64_t) {}
  static __m512i load(const T* p) { return _mm512_loadu_si512(p); }
  static void store(T* p, __m512i v) { _mm512_storeu_si512(p, v); }
  static __m512i vmin(__m512i a, __m512i b) { return _mm512_min_epu64(a, b); }
  static __m512i vmax(__m512i a, __m512i b) { return _mm512_max_epu64(a, b); }
  template <int X>  // lane i <- lane i ^ X (in-lane shuffles where they do)
  static __m512i perm_xor(__m512i v) {
    if constexpr (X == 1) return _mm512_shuffle_epi32(v, _MM_PERM_BADC);
    if constexpr (X == 2) return _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(2, 3, 0, 1));
    if constexpr (X == 4) return _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(1, 0, 3, 2));
    return _mm512_permutexvar_epi64(_mm512_set_epi64(7 ^ X, 6 ^ X, 5 ^ X, 4 ^ X, 3 ^ X, 2 ^ X, 1 ^ X, 0 ^ X), v);
  }
  template <int Bit>  // min(v, p) in the lanes without Bit, max(v, p) in the lanes with it
  static __m512i minmax_bit(__m512i v, __m512i p) {
    return _mm512_mask_max_epu64(_mm512_min_epu64(v, p), static_cast<__mmask8>(lanes_with_bit<L, Bit>()), v, p);
  }
  static constexpr T kMax = ~T(0);
};

// 16 lanes of uint32.
struct U32x16 {
  using T = uint32_t;
  using Vec = __m512i;
  static constexpr int L = 16;
  static bool le(T a, T b) { return a <= b; }
  static void enter(T*, int64_t) {}
  static void leave(T*, int64_t) {}
  static __m512i load(const T* p) { return _mm512_loadu_si512(p); }
  static void store(T* p, __m512i v) { _mm512_storeu_si512(p, v); }
  static __m512i vmin(__m512i a, __m512i b) { return _mm512_min_epu32(a, b); }
  static __m512i vmax(__m512i a, __m512i b) { return _mm512_max_epu32(a, b); }
  template <int X>
  static __m512i perm_xor(__m512i v) {
    if constexpr (X == 1) return _mm512_shuffle_epi32(v, _MM_PERM_CDAB);
    if constexpr (X == 2) return _mm512_shuffle_epi32(v, _MM_PERM_BADC);
    if constexpr (X == 4) return _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1));
    if constexpr (X == 8) return _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2));
    return _mm512_permutexvar_epi32(
        _mm512_set_epi32(15 ^ X, 14 ^ X, 13 ^ X, 12 ^ X, 11 ^ X, 10 ^ X, 9 ^ X, 8 ^ X, 7 ^ X, 6 ^ X, 5 ^ X, 4 ^ X,
                         3 ^ X, 2 ^ X, 1 ^ X, 0 ^ X),
        v);
  }
  template <int Bit>
  static __m512i minmax_bit(__m512i v, __m512i p) {
    return _mm512_mask_max_epu32(_mm512_min_epu32(v, p), static_cast<__mmask16>(lanes_with_bit<L, Bit>()), v, p);
  }
  static constexpr T kMax = ~T(0);
};


// KeyTraits<float>::to_key on 16 floats (as integers); -0 is folded onto +0 by adding +0.
inline __m512i float_keys(__m512 v) {
  const __m512i u = _mm512_castps_si512(_mm512_add_ps(v, _mm512_setzero_ps()));
  const __m512i mask = _mm512_or_si512(_mm512_srai_epi32(u, 31), _mm512_set1_epi32(int32_t(0x80000000u)));
  return _mm512_xor_si512(u, mask);
}

// KeyTraits<float>::from_key on 16 keys.
inline __m512 key_floats(__m512i k) {
  const __m512i mask = _mm512_or_si512(_mm512_sub_epi32(_mm512_srli_epi32(k, 31), _mm512_set1_epi32(1)),
                                       _mm512_set1_epi32(int32_t(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_xor_si512(k, mask));
}

bool keys_u64(const float* src, int64_t n, uint64_t* out) {
  __mmask16 nan = 0;
  __m512i pos = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  // Interleaves (position, key) pairs of 32-bit lanes into 64-bit items: lo lanes 0-7, hi lanes 8-15.
  const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(src + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i k = float_keys(v);
    _mm512_storeu_si512(out + i, _mm512_permutex2var_epi32(pos, lo_idx, k));
    _mm512_storeu_si512(out + i + 8, _mm512_permutex2var_epi32(pos, hi_idx, k));
    pos = _mm512_add_epi32(pos, _mm512_set1_epi32(16));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, src + i);
    nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
    const __m512i k = float_keys(v);
    const __m512i lo = _mm512_permutex2var_epi32(pos, lo_idx, k);
    const __m512i hi = _mm512_permutex2var_epi32(pos, hi_idx, k);
    _mm512_mask_storeu_epi64(out + i, static_cast<__mmask8>(m & 0xFF), lo);
    _mm512_mask_storeu_epi64(out + i + 8, static_cast<__mmask8>(m >> 8), hi);
  }
  return nan != 0;
}

bool keys_u32(const float* src, int64_t n, uint32_t* out) {
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(src + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    _mm512_storeu_si512(out + i, float_keys(v));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, src + i);
    nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
    _mm512_mask_storeu_epi32(out + i, m, float_keys(v));
  }
  return nan != 0;
}

double match_equal(const uint64_t* x, const uint32_t* y, int64_t n, int p, float* dx) {
  const float inv = static_cast<float>(1.0 / static_cast<double>(n));
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512 zero = _mm512_setzero_ps();
  // Keys (odd 32-bit lanes) and positions (even lanes) of 16 items held in two vectors.
  const __m512i key_idx = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512i pos_idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  __m512d acc_lo = _mm512_setzero_pd(), acc_hi = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512i a = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(m & 0xFF), x + i);
    const __m512i b = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(m >> 8), x + i + 8);
    const __m512 xv = key_floats(_mm512_permutex2var_epi32(a, key_idx, b));
    const __m512i xp = _mm512_permutex2var_epi32(a, pos_idx, b);
    const __m512 yv = key_floats(_mm512_maskz_loadu_epi32(m, y + i));
    const __m512 d = _mm512_maskz_sub_ps(m, xv, yv);  // 0 in the lanes past the row: no cost
    __m512 cost, g;
    if (p == 1) {
      cost = _mm512_abs_ps(d);
      g = d;  // sign(d), 0 at 0, NaN stays NaN (pair_grad)
      g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(d, zero, _CMP_GT_OQ), _mm512_set1_ps(1.0f));
      g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(d, zero, _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
      g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(d, zero, _CMP_EQ_OQ), zero);
    } else {
      cost = _mm512_mul_ps(d, d);
      g = _mm512_mul_ps(_mm512_set1_ps(2.0f), d);
    }
    acc_lo = _mm512_add_pd(acc_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(cost)));
    acc_hi = _mm512_add_pd(acc_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(cost), 1))));
    _mm512_mask_i32scatter_ps(dx, m, xp, _mm512_mul_ps(g, vinv), 4);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(acc_lo, acc_hi));
}

double match_unequal(const uint64_t* x, const uint32_t* y, int64_t n, int64_t m, int p, float* dx) {
  // 8 x atoms per step, in double lanes: atom i spans [i m, (i + 1) m) in units of 1 / (n m), all
  // integers below 2^53 here (the caller checks n m), so the double arithmetic is exact.
  const double total = static_cast<double>(n) * static_cast<double>(m);
  const __m512d inv = _mm512_set1_pd(1.0 / total);
  const __m512d dn = _mm512_set1_pd(static_cast<double>(n));
  const __m512d dm = _mm512_set1_pd(static_cast<double>(m));
  const __m512d inv_n = _mm512_set1_pd(1.0 / static_cast<double>(n));
  const __m512d zero_d = _mm512_setzero_pd();
  const __m256 zero = _mm256_setzero_ps();
  const int64_t overlap = (m + n - 1) / n + 1;  // most y atoms one x atom can overlap
  __m512d acc = _mm512_setzero_pd();
  __m512d idx = _mm512_set_pd(7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t i = 0; i < n; i += 8) {
    const __mmask8 mx = n - i >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << (n - i)) - 1u);
    const __m512i items = _mm512_maskz_loadu_epi64(mx, x + i);
    const __m256i xk = _mm512_cvtepi64_epi32(_mm512_srli_epi64(items, 32));
    const __m256i xp = _mm512_cvtepi64_epi32(items);
    const __m256 xv = _mm512_castps512_ps256(key_floats(_mm512_castsi256_si512(xk)));
    const __m512d lo = _mm512_mul_pd(idx, dm);
    const __m512d hi = _mm512_add_pd(lo, dm);
    __m512d b = _mm512_roundscale_pd(_mm512_mul_pd(lo, inv_n), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    // Exact floor(lo / n) whatever the rounding of lo * (1 / n) (off by one at most).
    b = _mm512_mask_sub_pd(b, _mm512_cmp_pd_mask(_mm512_mul_pd(b, dn), lo, _CMP_GT_OQ), b, _mm512_set1_pd(1.0));
    b = _mm512_mask_add_pd(b, _mm512_cmp_pd_mask(_mm512_add_pd(_mm512_mul_pd(b, dn), dn), lo, _CMP_LE_OQ), b,
                           _mm512_set1_pd(1.0));
    __m512d gx = zero_d;  // in double, as match_row: an atom may span ~m / n segments
    for (int64_t t = 0; t < overlap; ++t) {
      const __m512d start = _mm512_max_pd(_mm512_mul_pd(b, dn), lo);
      const __m512d end = _mm512_min_pd(_mm512_add_pd(_mm512_mul_pd(b, dn), dn), hi);
      const __m512d len = _mm512_sub_pd(end, start);
      const __mmask8 on = _mm512_mask_cmp_pd_mask(mx, len, zero_d, _CMP_GT_OQ);
      if (on == 0) break;
      // Clamped: lanes past the row's end keep advancing b (masked off, but their index must not
      // overflow int32 or upset the window test).
      const __m256i yi = _mm512_cvttpd_epi32(_mm512_min_pd(b, _mm512_set1_pd(static_cast<double>(m - 1))));
      // The 8 atoms' y indices rise by ~m/n per lane: when they fit in a window of 16 keys, one
      // (masked) load and a permute replace the gather.
      const int32_t w0 = _mm256_cvtsi256_si32(yi);
      const int32_t w7 = _mm256_extract_epi32(yi, 7);
      __m256i yk;
      if (w7 - w0 < 16) {
        const int64_t left = m - w0;
        const __mmask16 valid = left >= 16  ? static_cast<__mmask16>(0xFFFF)
                                : left <= 0 ? static_cast<__mmask16>(0)
                                            : static_cast<__mmask16>((1u << left) - 1u);
        const __m512i window = _mm512_maskz_loadu_epi32(valid, y + w0);
        const __m512i rel = _mm512_castsi256_si512(_mm256_sub_epi32(yi, _mm256_set1_epi32(w0)));
        yk = _mm512_castsi512_si256(_mm512_permutexvar_epi32(rel, window));
      } else {
        yk = _mm256_mmask_i32gather_epi32(_mm256_setzero_si256(), on, yi, y, 4);
      }
      const __m256 yv = _mm512_castps512_ps256(key_floats(_mm512_castsi256_si512(yk)));
      const __m256 d = _mm256_maskz_sub_ps(on, xv, yv);
      __m256 cost, g;
      if (p == 1) {
        cost = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), d);
        g = d;  // pair_grad: sign(d), 0 at 0, NaN stays NaN
        g = _mm256_mask_mov_ps(g, _mm256_cmp_ps_mask(d, zero, _CMP_GT_OQ), _mm256_set1_ps(1.0f));
        g = _mm256_mask_mov_ps(g, _mm256_cmp_ps_mask(d, zero, _CMP_LT_OQ), _mm256_set1_ps(-1.0f));
        g = _mm256_mask_mov_ps(g, _mm256_cmp_ps_mask(d, zero, _CMP_EQ_OQ), zero);
      } else {
        cost = _mm256_mul_ps(d, d);
        g = _mm256_mul_ps(_mm256_set1_ps(2.0f), d);
      }
      acc = _mm512_mask_add_pd(acc, on, acc, _mm512_mul_pd(len, _mm512_cvtps_pd(cost)));
      gx = _mm512_mask_add_pd(gx, on, gx, _mm512_mul_pd(_mm512_cvtps_pd(g), len));
      b = _mm512_add_pd(b, _mm512_set1_pd(1.0));
    }
    _mm256_mask_i32scatter_ps(dx, mx, xp, _mm512_cvtpd_ps(_mm512_mul_pd(gx, inv)), 4);
    idx = _mm512_add_pd(idx, _mm512_set1_pd(8.0));
  }
  return _mm512_reduce_add_pd(acc);
}

double match_equal_f64(const uint64_t* x, const double* xv, const uint64_t* y, const double* yv, int64_t n, int p,
                       double* dx) {
  const __m512d inv = _mm512_set1_pd(1.0 / static_cast<double>(n));
  const __m512d zero = _mm512_setzero_pd();
  __m512d acc = _mm512_setzero_pd();
  for (int64_t i = 0; i < n; i += 8) {
    const __mmask8 m = n - i >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << (n - i)) - 1u);
    const __m256i px = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(m, x + i));
    const __m256i py = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(m, y + i));
    const __m512d a = _mm512_mask_i32gather_pd(zero, m, px, xv, 8);
    const __m512d b = _mm512_mask_i32gather_pd(zero, m, py, yv, 8);
    const __m512d d = _mm512_maskz_sub_pd(m, a, b);
    __m512d cost, g;
    if (p == 1) {
      cost = _mm512_abs_pd(d);
      g = d;  // pair_grad: sign(d), 0 at 0, NaN stays NaN
      g = _mm512_mask_mov_pd(g, _mm512_cmp_pd_mask(d, zero, _CMP_GT_OQ), _mm512_set1_pd(1.0));
      g = _mm512_mask_mov_pd(g, _mm512_cmp_pd_mask(d, zero, _CMP_LT_OQ), _mm512_set1_pd(-1.0));
      g = _mm512_mask_mov_pd(g, _mm512_cmp_pd_mask(d, zero, _CMP_EQ_OQ), zero);
    } else {
      cost = _mm512_mul_pd(d, d);
      g = _mm512_mul_pd(_mm512_set1_pd(2.0), d);
    }
    acc = _mm512_add_pd(acc, cost);
    _mm512_mask_i32scatter_pd(dx, m, px, _mm512_mul_pd(g, inv), 8);
  }
  return _mm512_reduce_add_pd(acc);
}

void widen_f16(const uint16_t* src, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(out + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

using Sorts = SortEntries<U64x8, U32x16>;

}  // namespace

#pragma GCC diagnostic pop
#pragma GCC pop_options

const SimdKernels* avx512_kernels() {  // compiled for the baseline: callable anywhere
  // Merge sort up to 2048 (64-bit) / 8192 (32-bit): measured per item, two rows at a time, vs the
  // radix sort, 64-bit: 4.9 vs 5.2 ns at 2048, 5.6 vs 5.4 at 4096; 32-bit: 3.1 vs 3.8 at 8192.
  static const SimdKernels kernels{"avx512",        2048,           8192,        Sorts::sort_u64, Sorts::sort_u32,
                                   Sorts::sort2_u64, Sorts::sort2_u32, keys_u64,    keys_u32,        widen_f16,
                                   match_equal,      match_unequal,    match_equal_f64};
  return &kernels;
}

#else

const SimdKernels* avx512_kernels() { return nullptr; }  // not an x86-64 GCC build

#endif

}  // namespace cpu
}  // namespace pdl_ext
