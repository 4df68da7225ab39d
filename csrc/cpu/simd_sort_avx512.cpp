// AVX-512 merge sort of one row of unsigned keys (see simd_sort.h).
//
// Blocks of up to 8 vectors are sorted in registers (a bitonic network inside each vector, then
// bitonic merges of vectors), and sorted runs are merged pairwise through registers: the merge keeps
// the larger half of the last merged vectors and loads the next vectors from the run whose head is
// smaller (Inoue et al., "AA-sort", 2007; Chhugani et al., "Efficient implementation of sorting on
// multi-core SIMD CPU architecture", 2008).
//
// Only this file is compiled for AVX-512 (target pragma below). It includes no library header after
// the pragma and keeps its code in an anonymous namespace, so no inline function compiled for
// AVX-512 can be shared with (and picked by the linker for) the portable code.
#include "simd_sort.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define PDL_EXT_HAVE_AVX512_SORT 1
#include <immintrin.h>
#endif

namespace pdl_ext {
namespace cpu {

namespace {

constexpr int64_t round_up(int64_t n, int64_t b) { return (n + b - 1) / b * b; }

bool env_allows_simd() {
  const char* v = std::getenv("PDL_EXT_CPU_SORT");
  return v == nullptr || std::strcmp(v, "radix") != 0;
}

}  // namespace

int64_t simd_sort_capacity_u64(int64_t n) { return round_up(n, 64); }
int64_t simd_sort_capacity_u32(int64_t n) { return round_up(n, 128); }

#if PDL_EXT_HAVE_AVX512_SORT

bool simd_sort_available() {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return cpu && env_allows_simd();
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")
// GCC 12's avx512fintrin.h trips -Wuninitialized on its own _mm512_undefined_* helpers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

template <int L, int Bit>
constexpr unsigned lanes_with_bit() {
  unsigned m = 0;
  for (int i = 0; i < L; ++i) m |= ((i & Bit) != 0 ? 1u : 0u) << i;
  return m;
}

// 8 lanes of uint64.
struct U64x8 {
  using T = uint64_t;
  static constexpr int L = 8;
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
  static constexpr int L = 16;
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

// Compare-exchange of lanes i and i ^ J inside a vector (the lane with bit J set keeps the max).
template <class V, int J>
inline __m512i cx_xor(__m512i v) {
  return V::template minmax_bit<J>(v, V::template perm_xor<J>(v));
}

// Half-cleaners at lane distances J, J/2, ..., 1: sorts every block of 2J lanes that is bitonic.
template <class V, int J>
inline __m512i clean(__m512i v) {
  if constexpr (J >= 1) {
    return clean<V, J / 2>(cx_xor<V, J>(v));
  } else {
    return v;
  }
}

// Sorts the lanes of one vector: blocks of K lanes from sorted halves, K = 2, 4, ..., L (each step
// compares lane i with its mirror in the block, then cleans the halves).
template <class V, int K = 2>
inline __m512i sort_lanes(__m512i v) {
  if constexpr (K <= V::L) {
    v = V::template minmax_bit<K / 2>(v, V::template perm_xor<K - 1>(v));
    return sort_lanes<V, 2 * K>(clean<V, K / 4>(v));
  } else {
    return v;
  }
}

// r[0, R/2) and r[R/2, R) are sorted runs of vectors; merges them into one sorted run r[0, R).
template <class V, int R>
inline void merge_vectors(__m512i* r) {
  // The first run followed by the second reversed is bitonic: its half-cleaner compares vector i of
  // the first run with the reversed vector R - 1 - i of the second.
  __m512i hi[R / 2];
  for (int i = 0; i < R / 2; ++i) {
    const __m512i b = V::template perm_xor<V::L - 1>(r[R - 1 - i]);
    hi[i] = V::vmax(r[i], b);
    r[i] = V::vmin(r[i], b);
  }
  for (int i = 0; i < R / 2; ++i) r[R / 2 + i] = hi[i];
  for (int s = R / 4; s >= 1; s /= 2) {  // half-cleaners across vectors
    for (int i = 0; i < R; ++i) {
      if ((i & s) == 0) {
        const __m512i lo = V::vmin(r[i], r[i + s]);
        r[i + s] = V::vmax(r[i], r[i + s]);
        r[i] = lo;
      }
    }
  }
  for (int i = 0; i < R; ++i) r[i] = clean<V, V::L / 2>(r[i]);
}

// Sorts R vectors of items at p in registers.
template <class V, int R>
inline void sort_block(typename V::T* p) {
  __m512i r[R];
  for (int i = 0; i < R; ++i) r[i] = sort_lanes<V>(V::load(p + i * V::L));
  if constexpr (R >= 2) {
    for (int i = 0; i < R; i += 2) merge_vectors<V, 2>(r + i);
  }
  if constexpr (R >= 4) {
    for (int i = 0; i < R; i += 4) merge_vectors<V, 4>(r + i);
  }
  if constexpr (R >= 8) merge_vectors<V, 8>(r);
  for (int i = 0; i < R; ++i) V::store(p + i * V::L, r[i]);
}

// One merge of sorted runs a[0, na) and b[0, nb) (lengths multiples of W vectors, both > 0) into out,
// W vectors at a time: r[W, 2W) holds the larger half of the last merge, the next W vectors come from
// the run whose head is smaller (an exhausted run's head counts as +inf).
template <class V, int W>
struct RunMerge {
  using T = typename V::T;
  static constexpr int64_t U = int64_t(W) * V::L;
  const T* a;
  const T* b;
  T* out;
  int64_t na, nb, ia = U, ib = U;
  __m512i r[2 * W];

  inline void start() {
    for (int i = 0; i < W; ++i) {
      r[i] = V::load(a + i * V::L);
      r[W + i] = V::load(b + i * V::L);
    }
    emit();
  }
  inline void emit() {
    merge_vectors<V, 2 * W>(r);
    for (int i = 0; i < W; ++i) V::store(out + i * V::L, r[i]);
    out += U;
  }
  inline void step() {
    const T ha = ia < na ? a[ia] : V::kMax;
    const T hb = ib < nb ? b[ib] : V::kMax;
    const bool take_a = ib >= nb || (ia < na && ha <= hb);
    const T* s = take_a ? a + ia : b + ib;
    ia += take_a ? U : 0;
    ib += take_a ? 0 : U;
    for (int i = 0; i < W; ++i) {
      r[i] = r[W + i];
      r[W + i] = V::load(s + i * V::L);
    }
    emit();
  }
  inline void finish() {
    for (int i = 0; i < W; ++i) V::store(out + i * V::L, r[W + i]);
  }
};

// Merges two independent pairs of runs of the same lengths in one loop: the two dependency chains
// (each step waits for the previous merge) overlap, which a single merge leaves idle.
template <class V, int W>
inline void merge_runs2(RunMerge<V, W>& m1, RunMerge<V, W>& m2) {
  m1.start();
  m2.start();
  const int64_t steps = (m1.na + m1.nb) / RunMerge<V, W>::U - 2;
  for (int64_t k = 0; k < steps; ++k) {
    m1.step();
    m2.step();
  }
  m1.finish();
  m2.finish();
}

template <class V>
inline int64_t block_vectors(int64_t n) {
  int64_t regs = 1;  // vectors per block: the row's, up to 8
  while (regs * V::L < n && regs < 8) regs *= 2;
  return regs;
}

// Pads a[n, padded) with the largest key and sorts each block of `regs` vectors in registers.
template <class V>
inline void sort_blocks(typename V::T* a, int64_t n, int64_t regs, int64_t padded) {
  const int64_t block = regs * V::L;
  for (int64_t i = n; i < padded; ++i) a[i] = V::kMax;
  for (int64_t i = 0; i < padded; i += block) {
    switch (regs) {
      case 1: sort_block<V, 1>(a + i); break;
      case 2: sort_block<V, 2>(a + i); break;
      case 4: sort_block<V, 4>(a + i); break;
      default: sort_block<V, 8>(a + i); break;
    }
  }
}

// Sorts rows (a[k], n) for k < rows (1 or 2 rows of the same length) with tmp[k] as scratch; returns
// in out[k] the buffer holding each sorted row. Two rows are merged in lockstep (merge_runs2).
template <class V, int W>
void sort_rows(typename V::T* const* a, typename V::T* const* tmp, int rows, int64_t n, typename V::T** out) {
  using T = typename V::T;
  const int64_t regs = block_vectors<V>(n);
  const int64_t block = regs * V::L;
  const int64_t padded = round_up(n, block);
  T* src[2];
  T* dst[2];
  for (int k = 0; k < rows; ++k) {
    sort_blocks<V>(a[k], n, regs, padded);
    src[k] = a[k];
    dst[k] = tmp[k];
  }
  for (int64_t run = block; run < padded; run *= 2) {  // here block = 8 L, a multiple of W L
    for (int64_t i = 0; i < padded; i += 2 * run) {
      const int64_t na = run < padded - i ? run : padded - i;
      const int64_t nb = run < padded - i - na ? run : padded - i - na;
      if (nb == 0) {
        for (int k = 0; k < rows; ++k) std::memcpy(dst[k] + i, src[k] + i, sizeof(T) * na);
      } else if (rows == 2) {
        RunMerge<V, W> m1{src[0] + i, src[0] + i + na, dst[0] + i, na, nb};
        RunMerge<V, W> m2{src[1] + i, src[1] + i + na, dst[1] + i, na, nb};
        merge_runs2(m1, m2);
      } else {
        RunMerge<V, W> m{src[0] + i, src[0] + i + na, dst[0] + i, na, nb};
        m.start();
        while (m.ia < na || m.ib < nb) m.step();
        m.finish();
      }
    }
    for (int k = 0; k < rows; ++k) {
      T* t = src[k];
      src[k] = dst[k];
      dst[k] = t;
    }
  }
  for (int k = 0; k < rows; ++k) out[k] = src[k];
}

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

}  // namespace

bool simd_keys_u64(const float* src, int64_t n, uint64_t* out) {
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

bool simd_keys_u32(const float* src, int64_t n, uint32_t* out) {
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

double simd_match_equal(const uint64_t* x, const uint32_t* y, int64_t n, int p, float* dx) {
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

double simd_match_unequal(const uint64_t* x, const uint32_t* y, int64_t n, int64_t m, int p, float* dx) {
  // 8 x atoms per step, in double lanes: atom i spans [i m, (i + 1) m) in units of 1 / (n m), all
  // integers below 2^53 here (the caller checks n m), so the double arithmetic is exact.
  const double total = static_cast<double>(n) * static_cast<double>(m);
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / total));
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
    __m256 gx = zero;
    for (int64_t t = 0; t < overlap; ++t) {
      const __m512d start = _mm512_max_pd(_mm512_mul_pd(b, dn), lo);
      const __m512d end = _mm512_min_pd(_mm512_add_pd(_mm512_mul_pd(b, dn), dn), hi);
      const __m512d len = _mm512_sub_pd(end, start);
      const __mmask8 on = _mm512_mask_cmp_pd_mask(mx, len, zero_d, _CMP_GT_OQ);
      if (on == 0) break;
      const __m256i yi = _mm512_cvttpd_epi32(b);
      const __m256i yk = _mm256_mmask_i32gather_epi32(_mm256_setzero_si256(), on, yi, y, 4);
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
      gx = _mm256_mask_add_ps(gx, on, gx, _mm256_mul_ps(g, _mm512_cvtpd_ps(len)));
      b = _mm512_add_pd(b, _mm512_set1_pd(1.0));
    }
    _mm256_mask_i32scatter_ps(dx, mx, xp, _mm256_mul_ps(gx, inv), 4);
    idx = _mm512_add_pd(idx, _mm512_set1_pd(8.0));
  }
  return _mm512_reduce_add_pd(acc);
}

uint64_t* simd_sort_u64(uint64_t* a, uint64_t* tmp, int64_t n) {
  uint64_t* out;
  sort_rows<U64x8, 2>(&a, &tmp, 1, n, &out);
  return out;
}
uint32_t* simd_sort_u32(uint32_t* a, uint32_t* tmp, int64_t n) {
  uint32_t* out;
  sort_rows<U32x16, 2>(&a, &tmp, 1, n, &out);
  return out;
}
void simd_sort2_u64(uint64_t* const a[2], uint64_t* const tmp[2], int64_t n, uint64_t* out[2]) {
  sort_rows<U64x8, 2>(a, tmp, 2, n, out);
}
void simd_sort2_u32(uint32_t* const a[2], uint32_t* const tmp[2], int64_t n, uint32_t* out[2]) {
  sort_rows<U32x16, 2>(a, tmp, 2, n, out);
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

#else  // no AVX-512 sort in this build: callers use the radix sort

bool simd_sort_available() { return false; }
uint64_t* simd_sort_u64(uint64_t* a, uint64_t*, int64_t) { std::abort(); return a; }
uint32_t* simd_sort_u32(uint32_t* a, uint32_t*, int64_t) { std::abort(); return a; }
void simd_sort2_u64(uint64_t* const*, uint64_t* const*, int64_t, uint64_t**) { std::abort(); }
void simd_sort2_u32(uint32_t* const*, uint32_t* const*, int64_t, uint32_t**) { std::abort(); }
bool simd_keys_u64(const float*, int64_t, uint64_t*) { std::abort(); }
bool simd_keys_u32(const float*, int64_t, uint32_t*) { std::abort(); }
double simd_match_equal(const uint64_t*, const uint32_t*, int64_t, int, float*) { std::abort(); }
double simd_match_unequal(const uint64_t*, const uint32_t*, int64_t, int64_t, int, float*) { std::abort(); }

#endif

}  // namespace cpu
}  // namespace pdl_ext
