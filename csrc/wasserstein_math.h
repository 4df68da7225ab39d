// Per-element math of the sort-and-match 1D Wasserstein distance, shared by the CPU and CUDA kernels.
//
// Everything here is a small inline function usable on the host and on the device, so the CPU tests
// exercise exactly the arithmetic the CUDA kernels run.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PDL_HD __host__ __device__ __forceinline__
#else
#define PDL_HD inline
#endif

namespace pdl_ext {

// ---------------------------------------------------------------------------------------------
// Order-preserving key transform: float bits -> unsigned integer whose unsigned order is the
// numeric order of the floats. -0.0 is folded onto +0.0 first so that equal values are ties
// (a stable sort then orders them by position, as torch.sort(stable=True) does).
// NaN keys sort after +inf (positive NaN) or before -inf (negative NaN); rows holding NaN are
// reported as NaN by the kernels, so their order never matters.
// ---------------------------------------------------------------------------------------------
template <typename T> struct KeyTraits;

template <> struct KeyTraits<float> {
  using Key = uint32_t;
  static constexpr int kBits = 32;
  PDL_HD static Key to_key(float v) {
    v = v + 0.0f;  // -0.0 -> +0.0
    uint32_t u;
#if defined(__CUDA_ARCH__)
    u = __float_as_uint(v);
#else
    std::memcpy(&u, &v, sizeof(u));
#endif
    // Negative: flip all bits; positive: flip the sign bit (branch-free: signs of data are random).
    const uint32_t mask = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;
    return u ^ mask;
  }
  PDL_HD static float from_key(Key k) {
    const uint32_t mask = ((k >> 31) - 1u) | 0x80000000u;
    const uint32_t u = k ^ mask;
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float v;
    std::memcpy(&v, &u, sizeof(v));
    return v;
#endif
  }
};

template <> struct KeyTraits<double> {
  using Key = uint64_t;
  static constexpr int kBits = 64;
  PDL_HD static Key to_key(double v) {
    v = v + 0.0;
    uint64_t u;
#if defined(__CUDA_ARCH__)
    u = static_cast<uint64_t>(__double_as_longlong(v));
#else
    std::memcpy(&u, &v, sizeof(u));
#endif
    const uint64_t mask = static_cast<uint64_t>(static_cast<int64_t>(u) >> 63) | 0x8000000000000000ull;
    return u ^ mask;
  }
  PDL_HD static double from_key(Key k) {
    const uint64_t mask = ((k >> 63) - 1ull) | 0x8000000000000000ull;
    const uint64_t u = k ^ mask;
#if defined(__CUDA_ARCH__)
    return __longlong_as_double(static_cast<long long>(u));
#else
    double v;
    std::memcpy(&v, &u, sizeof(v));
    return v;
#endif
  }
};

// ---------------------------------------------------------------------------------------------
// Cost and (sub)gradient of one matched pair, d = a - b, for W_p^p with p in {1, 2}.
// p = 1: |d|, derivative sign(d) with sign(0) = 0 (the subgradient torch.abs uses).
// p = 2: d^2, derivative 2 d.
// ---------------------------------------------------------------------------------------------
template <typename A> PDL_HD A pair_cost(A d, int p) {
  return p == 1 ? (d < A(0) ? -d : d) : d * d;
}

template <typename A> PDL_HD A pair_grad(A d, int p) {
  if (p == 1) return d > A(0) ? A(1) : (d < A(0) ? A(-1) : (d == A(0) ? A(0) : d));  // NaN stays NaN
  return A(2) * d;
}

// ---------------------------------------------------------------------------------------------
// Unequal sizes: the quantile functions of x (N atoms) and y (M atoms) are step functions with
// breakpoints at i/N and j/M. Measured in units of 1/(N*M), atom i of x covers [i*M, (i+1)*M) and
// atom j of y covers [j*N, (j+1)*N). Walking both grids in order visits N + M - 1 segments at most;
// each pairs one x atom with one y atom, with an exact integer length.
// ---------------------------------------------------------------------------------------------
struct MergeCursor {
  int64_t i = 0, j = 0, t = 0;  // current atoms and the start of the current segment
};

// Advances the cursor by one segment: returns the segment's length (in units of 1/(N*M)) and
// leaves (i, j) at the atoms of the segment just measured in (seg_i, seg_j).
PDL_HD int64_t merge_step(MergeCursor& c, int64_t n, int64_t m, int64_t& seg_i, int64_t& seg_j) {
  const int64_t end_x = (c.i + 1) * m;
  const int64_t end_y = (c.j + 1) * n;
  const int64_t end = end_x < end_y ? end_x : end_y;
  const int64_t len = end - c.t;
  seg_i = c.i;
  seg_j = c.j;
  c.t = end;
  if (end_x == end) ++c.i;
  if (end_y == end) ++c.j;
  return len;
}

// ---------------------------------------------------------------------------------------------
// Unequal sizes, one atom at a time (the CUDA kernels give each thread its own atoms). Atom a of one
// side (na atoms) spans [a*nb, (a+1)*nb) and overlaps the atoms b = a*nb/na, ... of the other side
// (nb atoms, atom b spans [b*na, (b+1)*na)). Visiting them in order of b gives the merge walk's
// segments, lengths and summation order, so the result is the walk's gx (an x atom, kAtomOfX) or
// gy (a y atom) before the 1/(N*M) scale; `other(b)` is the other side's b-th smallest value.
// The atom's share of the loss, sum of len * pair_cost, is added to `cost`.
// ---------------------------------------------------------------------------------------------
template <bool kAtomOfX, typename A, typename Other>
PDL_HD A merge_atom(int64_t a, A va, int64_t na, int64_t nb, int p, Other other, A& cost) {
  const int64_t lo = a * nb;
  const int64_t hi = lo + nb;
  A g = A(0);
  for (int64_t b = lo / na; b * na < hi; ++b) {
    const int64_t s = b * na > lo ? b * na : lo;
    const int64_t e = (b + 1) * na < hi ? (b + 1) * na : hi;
    const A len = static_cast<A>(e - s);
    const A vb = other(b);
    const A d = kAtomOfX ? va - vb : vb - va;  // always x - y, as in the walk
    cost += len * pair_cost(d, p);
    const A t = pair_grad(d, p) * len;
    g = kAtomOfX ? g + t : g - t;
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// Fused feature normalization (as LPIPS): u[c] = f[c] / (r + eps), r = ||f[:]||_2 over channels at
// one position. Given H[c] = dL/du[c] and s = sum_c H[c] f[c], the gradient is
//   dL/df[c] = H[c] / (r + eps) - f[c] s / (r (r + eps)^2),
// taken as 0 at an all-zero position (r = 0; for ReLU features the gradient is zero there anyway),
// unless H is NaN there: a NaN row (an inf or NaN feature of the sample, whose norm is then NaN)
// makes every gradient of the sample NaN, all-zero positions included.
// ---------------------------------------------------------------------------------------------
constexpr double kNormEps = 1e-10;

template <typename A> PDL_HD A inv_norm(A r) { return A(1) / (r + A(kNormEps)); }

template <typename A> PDL_HD A normalize_grad(A h, A f, A s, A r) {
  if (r == A(0)) return h != h ? h : A(0);  // a NaN norm falls through and gives NaN, as the policy says
  const A a = A(1) / (r + A(kNormEps));
  return h * a - (f / r) * (s * a * a);  // f / r <= 1 first: no overflow for tiny norms
}

}  // namespace pdl_ext
