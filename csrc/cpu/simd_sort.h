// Vectorized (AVX-512) merge sort of one row of unsigned keys, for the per-row sorts of the CPU
// kernels on x86-64 processors that have AVX-512 (F, BW, DQ, VL).
//
// The functions live in their own translation unit compiled for AVX-512 and are only called after
// simd_sort_available() said yes, so the library still runs on processors without it (the radix
// sort in radix_sort.h is then used).
#pragma once

#include <cstdint>

namespace pdl_ext {
namespace cpu {

// True when this build has the AVX-512 sort and this processor (and OS) can run it, unless the
// environment variable PDL_EXT_CPU_SORT is "radix" (forces the portable radix sort; for tests and
// benchmarks of both paths).
bool simd_sort_available();

// Capacity a buffer needs for a row of n items: n rounded up to the sort's block of 8 vectors.
int64_t simd_sort_capacity_u64(int64_t n);
int64_t simd_sort_capacity_u32(int64_t n);

// Sorts a[0, n) ascending (unsigned order) using tmp as scratch; both buffers must hold
// simd_sort_capacity_*(n) items. The padding a[n, capacity) is overwritten with the largest value
// (callers must treat keys equal to that value, a NaN, as their NaN case). Returns the buffer that
// holds the sorted items (a or tmp).
uint64_t* simd_sort_u64(uint64_t* a, uint64_t* tmp, int64_t n);
uint32_t* simd_sort_u32(uint32_t* a, uint32_t* tmp, int64_t n);

// Two rows of the same length at once (their merges overlap): sorts a[k] with scratch tmp[k] and sets
// out[k] to the buffer holding sorted row k, k = 0, 1.
void simd_sort2_u64(uint64_t* const a[2], uint64_t* const tmp[2], int64_t n, uint64_t* out[2]);
void simd_sort2_u32(uint32_t* const a[2], uint32_t* const tmp[2], int64_t n, uint32_t* out[2]);

// Order-preserving keys of floats (KeyTraits<float>::to_key): out[i] = key(src[i]) << 32 | i (u64,
// the position in the low half) or key(src[i]) (u32). Returns true when src holds a NaN.
bool simd_keys_u64(const float* src, int64_t n, uint64_t* out);
bool simd_keys_u32(const float* src, int64_t n, uint32_t* out);

// The matching of two sorted rows of equal length n (x as key << 32 | position items, y as keys), the
// fast case of match_row in wasserstein_1d_cpu.cpp with the same float arithmetic per pair: writes
// dx[position] = d(W_p^p)/dx and returns sum over pairs of |x - y|^p in double (divide by n for W_p^p).
double simd_match_equal(const uint64_t* x, const uint32_t* y, int64_t n, int p, float* dx);

// The same for rows of lengths n != m (the merged quantile grid, as match_row walks it; n m < 2^52):
// returns the sum over segments of length * |x - y|^p in units of 1 / (n m) (divide by n m).
double simd_match_unequal(const uint64_t* x, const uint32_t* y, int64_t n, int64_t m, int p, float* dx);

}  // namespace cpu
}  // namespace pdl_ext
