// The AVX2 kernels of simd_sort.h: the merge sort of simd_sort_impl.h on 4 x uint64 and 8 x uint32
// lanes, vectorized key loads, and the vectorized matching of a loss's equal-length rows, for x86-64
// processors without AVX-512.
//
// AVX2 compares 64-bit lanes as signed integers only, so 64-bit items are sorted with their top bit
// flipped (enter/leave below), where the signed order is the unsigned one. Like the AVX-512 file,
// only this file is compiled for AVX2, it includes no header after the target pragma, and its code
// stays in an anonymous namespace.
#include "simd_sort.h"

#include <cstdint>
#include <cstring>

#include "../wasserstein_math.h"

// GCC only: Clang ignores `#pragma GCC target` (it then takes the portable radix path).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PDL_EXT_HAVE_AVX2_SORT 1
#include <immintrin.h>
#endif

namespace pdl_ext {
namespace cpu {

#if PDL_EXT_HAVE_AVX2_SORT

#pragma GCC push_options
#pragma GCC target("avx2,f16c")

namespace {

#include "simd_sort_impl.h"

constexpr uint64_t kSign64 = 0x8000000000000000ull;
constexpr int64_t kMaxRowU64 = 1024, kMaxRowU32 = 4096;  // merge sort up to these lengths

// 4 lanes of uint64, held with the top bit flipped while sorted.
struct U64x4 {
  using T = uint64_t;
  using Vec = __m256i;
  static constexpr int L = 4;
  static constexpr T kMax = ~kSign64;  // the largest in the signed order
  static bool le(T a, T b) { return static_cast<int64_t>(a) <= static_cast<int64_t>(b); }
  static void flip(T* a, int64_t n) {
    const __m256i s = _mm256_set1_epi64x(static_cast<int64_t>(kSign64));
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) store(a + i, _mm256_xor_si256(load(a + i), s));
    for (; i < n; ++i) a[i] ^= kSign64;
  }
  static void enter(T* a, int64_t n) { flip(a, n); }
  static void leave(T* a, int64_t n) { flip(a, n); }
  static __m256i load(const T* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(T* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static __m256i vmin(__m256i a, __m256i b) { return _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(a, b)); }
  static __m256i vmax(__m256i a, __m256i b) { return _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(a, b)); }
  template <int X>  // lane i <- lane i ^ X
  static __m256i perm_xor(__m256i v) {
    if constexpr (X == 1) return _mm256_shuffle_epi32(v, 0x4E);
    if constexpr (X == 2) return _mm256_permute4x64_epi64(v, 0x4E);
    return _mm256_permute4x64_epi64(v, 0x1B);  // X == 3: reverse
  }
  template <int Bit>  // min(v, p) in the lanes without Bit, max(v, p) in the lanes with it
  static __m256i minmax_bit(__m256i v, __m256i p) {
    const __m256i bit = _mm256_set_epi64x((3 & Bit) ? -1 : 0, (2 & Bit) ? -1 : 0, (1 & Bit) ? -1 : 0, 0);
    return _mm256_blendv_epi8(v, p, _mm256_xor_si256(_mm256_cmpgt_epi64(v, p), bit));
  }
};

// 8 lanes of uint32.
struct U32x8 {
  using T = uint32_t;
  using Vec = __m256i;
  static constexpr int L = 8;
  static constexpr T kMax = ~T(0);
  static bool le(T a, T b) { return a <= b; }
  static void enter(T*, int64_t) {}
  static void leave(T*, int64_t) {}
  static __m256i load(const T* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(T* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static __m256i vmin(__m256i a, __m256i b) { return _mm256_min_epu32(a, b); }
  static __m256i vmax(__m256i a, __m256i b) { return _mm256_max_epu32(a, b); }
  template <int X>
  static __m256i perm_xor(__m256i v) {
    if constexpr (X == 1) return _mm256_shuffle_epi32(v, 0xB1);
    if constexpr (X == 2) return _mm256_shuffle_epi32(v, 0x4E);
    if constexpr (X == 4) return _mm256_permute2x128_si256(v, v, 0x01);
    return _mm256_permutevar8x32_epi32(v, _mm256_set_epi32(7 ^ X, 6 ^ X, 5 ^ X, 4 ^ X, 3 ^ X, 2 ^ X, 1 ^ X, 0 ^ X));
  }
  template <int Bit>
  static __m256i minmax_bit(__m256i v, __m256i p) {
    constexpr int kMaxLanes = lanes_with_bit<8, Bit>();  // a name: at -O0 the intrinsic is a macro
    return _mm256_blend_epi32(_mm256_min_epu32(v, p), _mm256_max_epu32(v, p), kMaxLanes);
  }
};


// KeyTraits<float>::to_key on 8 floats; -0 is folded onto +0 by adding +0.
inline __m256i float_keys(__m256 v) {
  const __m256i u = _mm256_castps_si256(_mm256_add_ps(v, _mm256_setzero_ps()));
  const __m256i mask = _mm256_or_si256(_mm256_srai_epi32(u, 31), _mm256_set1_epi32(int32_t(0x80000000u)));
  return _mm256_xor_si256(u, mask);
}

// KeyTraits<float>::from_key on 8 keys.
inline __m256 key_floats(__m256i k) {
  const __m256i mask = _mm256_or_si256(_mm256_sub_epi32(_mm256_srli_epi32(k, 31), _mm256_set1_epi32(1)),
                                       _mm256_set1_epi32(int32_t(0x80000000u)));
  return _mm256_castsi256_ps(_mm256_xor_si256(k, mask));
}

inline bool any_nan(__m256 v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }

bool keys_u64(const float* src, int64_t n, uint64_t* out) {
  bool nan = false;
  __m256i pos = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    nan |= any_nan(v);
    const __m256i k = float_keys(v);
    const __m256i lo = _mm256_unpacklo_epi32(pos, k);  // items 0, 1 | 4, 5: (position, key) pairs
    const __m256i hi = _mm256_unpackhi_epi32(pos, k);  // items 2, 3 | 6, 7
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 4), _mm256_permute2x128_si256(lo, hi, 0x31));
    pos = _mm256_add_epi32(pos, _mm256_set1_epi32(8));
  }
  for (; i < n; ++i) {
    nan |= src[i] != src[i];
    out[i] = (static_cast<uint64_t>(KeyTraits<float>::to_key(src[i])) << 32) | static_cast<uint64_t>(i);
  }
  return nan;
}

bool keys_u32(const float* src, int64_t n, uint32_t* out) {
  bool nan = false;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    nan |= any_nan(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), float_keys(v));
  }
  for (; i < n; ++i) {
    nan |= src[i] != src[i];
    out[i] = KeyTraits<float>::to_key(src[i]);
  }
  return nan;
}

double match_equal(const uint64_t* x, const uint32_t* y, int64_t n, int p, float* dx) {
  const float inv = static_cast<float>(1.0 / static_cast<double>(n));
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 zero = _mm256_setzero_ps();
  __m256d acc = _mm256_setzero_pd();
  alignas(32) float g_out[8];
  alignas(32) int32_t p_out[8];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    const __m256 b = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 4)));
    // Odd dwords are the keys, even ones the positions (in the order 0 1 4 5 2 3 6 7, fixed by 0xD8).
    const __m256i xk = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8);
    const __m256i xp = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, 0x88)), 0xD8);
    const __m256 d = _mm256_sub_ps(key_floats(xk),
                                   key_floats(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i))));
    __m256 cost, g;
    if (p == 1) {
      cost = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), d);
      g = d;  // pair_grad: sign(d), 0 at 0, NaN stays NaN
      g = _mm256_blendv_ps(g, _mm256_set1_ps(1.0f), _mm256_cmp_ps(d, zero, _CMP_GT_OQ));
      g = _mm256_blendv_ps(g, _mm256_set1_ps(-1.0f), _mm256_cmp_ps(d, zero, _CMP_LT_OQ));
      g = _mm256_blendv_ps(g, zero, _mm256_cmp_ps(d, zero, _CMP_EQ_OQ));
    } else {
      cost = _mm256_mul_ps(d, d);
      g = _mm256_mul_ps(_mm256_set1_ps(2.0f), d);
    }
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(cost)));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(cost, 1)));
    _mm256_store_ps(g_out, _mm256_mul_ps(g, vinv));
    _mm256_store_si256(reinterpret_cast<__m256i*>(p_out), xp);
    for (int j = 0; j < 8; ++j) dx[p_out[j]] = g_out[j];  // no scatter in AVX2
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, acc);
  double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) {
    const float d = KeyTraits<float>::from_key(static_cast<uint32_t>(x[i] >> 32)) - KeyTraits<float>::from_key(y[i]);
    sum += static_cast<double>(pair_cost(d, p));
    dx[static_cast<uint32_t>(x[i])] = pair_grad(d, p) * inv;
  }
  return sum;
}

void widen_f16(const uint16_t* src, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < n; ++i) out[i] = _cvtsh_ss(src[i]);
}

using Sorts = SortEntries<U64x4, U32x8>;

}  // namespace

#pragma GCC pop_options

const SimdKernels* avx2_kernels() {  // compiled for the baseline: callable anywhere
  static const SimdKernels kernels{"avx2",           kMaxRowU64,       kMaxRowU32,  Sorts::sort_u64, Sorts::sort_u32,
                                   Sorts::sort2_u64, Sorts::sort2_u32, keys_u64,    keys_u32,        widen_f16,
                                   match_equal,      nullptr,          nullptr};
  return &kernels;
}

#else

const SimdKernels* avx2_kernels() { return nullptr; }  // not an x86-64 GCC build

#endif

}  // namespace cpu
}  // namespace pdl_ext
