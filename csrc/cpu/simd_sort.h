// Vectorized row sorts and matching for the CPU kernels, chosen at run time by the processor:
// AVX-512 (F, BW, DQ, VL), AVX2, or none (the kernels then use the radix sort of radix_sort.h).
//
// Each instruction set's kernels live in their own translation unit compiled for it
// (simd_sort_avx512.cpp, simd_sort_avx2.cpp; the shared merge sort is simd_sort_impl.h) and are only
// reached through simd_kernels(), which checks the processor first, so the library runs anywhere.
#pragma once

#include <cstdint>

namespace pdl_ext {
namespace cpu {

struct SimdKernels {
  const char* name;  // "avx512", "avx2" (or "radix": the portable per-row primitives of the CPU kernels)
  // Longest rows the merge sort takes (64-bit items, 32-bit keys); longer ones are radix sorted.
  int64_t max_row_u64, max_row_u32;

  // Sorts a[0, n) ascending (unsigned order) using tmp as scratch; both buffers must hold
  // simd_sort_capacity(n) items, whose tails past n the sort overwrites with padding. Returns the
  // buffer holding the sorted items in its first n places.
  uint64_t* (*sort_u64)(uint64_t* a, uint64_t* tmp, int64_t n);
  uint32_t* (*sort_u32)(uint32_t* a, uint32_t* tmp, int64_t n);
  // Two rows of the same length at once (their merges overlap): out[k] is sorted row k, k = 0, 1.
  void (*sort2_u64)(uint64_t* const a[2], uint64_t* const tmp[2], int64_t n, uint64_t* out[2]);
  void (*sort2_u32)(uint32_t* const a[2], uint32_t* const tmp[2], int64_t n, uint32_t* out[2]);

  // Order-preserving keys of floats (KeyTraits<float>::to_key): out[i] = key(src[i]) << 32 | i (u64,
  // the position in the low half) or key(src[i]) (u32). Returns true when src holds a NaN.
  bool (*keys_u64)(const float* src, int64_t n, uint64_t* out);
  bool (*keys_u32)(const float* src, int64_t n, uint32_t* out);

  // Widens n float16 values (IEEE binary16 bits) to float32, exactly; nullptr when the set has none.
  void (*widen_f16)(const uint16_t* src, int64_t n, float* out);

  // The matching of a loss's sorted rows (x as key << 32 | position items, y as keys), with
  // match_row's arithmetic per pair (float differences and derivatives; an atom's segments summed in
  // double): writes dx[position] = d(W_p^p)/dx. Equal lengths: returns the sum of |x - y|^p in
  // double (divide by n). Unequal (n m < 2^52; nullptr when the set has none): the sum over the
  // merged grid's segments of length * |x - y|^p (divide by n m).
  double (*match_equal)(const uint64_t* x, const uint32_t* y, int64_t n, int p, float* dx);
  double (*match_unequal)(const uint64_t* x, const uint32_t* y, int64_t n, int64_t m, int p, float* dx);
  // float64 rows of equal length, sorted as items (.. | position) over their values xv, yv: the same
  // as match_equal (nullptr when the set has none).
  double (*match_equal_f64)(const uint64_t* x, const double* xv, const uint64_t* y, const double* yv, int64_t n,
                            int p, double* dx);
};

// The kernels for this processor, or nullptr for the portable path. The environment variable
// PDL_EXT_CPU_PATH = auto (default) | avx512 | avx2 | radix (formerly PDL_EXT_CPU_SORT, still read
// when PDL_EXT_CPU_PATH is unset) caps the choice, for tests and benchmarks of every path; a set the
// processor lacks falls back to the next one down. Read on every call.
const SimdKernels* simd_kernels();

// The name of the path simd_kernels() picks: "avx512", "avx2" or "radix".
const char* cpu_path_name();

// Capacity a buffer needs for a row of n items (any instruction set).
inline int64_t simd_sort_capacity(int64_t n) { return (n + 127) / 128 * 128; }

// Per instruction set (nullptr when not compiled in); callers go through simd_kernels().
const SimdKernels* avx512_kernels();
const SimdKernels* avx2_kernels();

}  // namespace cpu
}  // namespace pdl_ext
