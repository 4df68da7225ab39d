// Arithmetic of the CUDA kernels that must round as the CPU build does (which compiles with
// -ffp-contract=off): nvcc contracts a * b + c into one FMA by default (--fmad=true), rounding once
// instead of twice. The rn:: helpers round every product and sum: on the device they are the
// __fmul_rn-style intrinsics, which nvcc never contracts; on the host plain operators (host builds
// of this header need -ffp-contract=off, as the CPU build and the tests use).
//
// Host-and-device code: the host tests compile this header with a C++ compiler
// (tests/test_cuda_kernels.py) to check merge_atom_f64 and RowMatch without a GPU.
#pragma once

#include <cstdint>

#include "../wasserstein_math.h"

namespace pdl_ext {
namespace rn {

#if defined(__CUDA_ARCH__)
PDL_HD float mul(float a, float b) { return __fmul_rn(a, b); }
PDL_HD float add(float a, float b) { return __fadd_rn(a, b); }
PDL_HD float sub(float a, float b) { return __fsub_rn(a, b); }
PDL_HD double mul(double a, double b) { return __dmul_rn(a, b); }
PDL_HD double add(double a, double b) { return __dadd_rn(a, b); }
PDL_HD double sub(double a, double b) { return __dsub_rn(a, b); }
#else
PDL_HD float mul(float a, float b) { return a * b; }
PDL_HD float add(float a, float b) { return a + b; }
PDL_HD float sub(float a, float b) { return a - b; }
PDL_HD double mul(double a, double b) { return a * b; }
PDL_HD double add(double a, double b) { return a + b; }
PDL_HD double sub(double a, double b) { return a - b; }
#endif

}  // namespace rn

// ---------------------------------------------------------------------------------------------
// Unequal sizes, one atom: merge_atom (wasserstein_math.h), the same segments in the same order,
// with the atom's gradient and its share of the loss summed in double. An atom of a row of N points
// against a row of M >> N points has about M / N segments; a float sum of that many terms of +-1
// stops growing at 2^24 (N = 1, M = 2^25, p = 1 gave a gradient of 0.5 instead of 1).
// Per segment of length len (integer) paired with the other side's value vb, d = x - y in A:
//   g    = g +- double(pair_grad(d, p)) * double(len)    (+ for an atom of x, - for one of y)
//   cost = cost + double(len) * double(pair_cost(d, p))
// each product and sum rounded. The caller scales g by 1.0 / (double(N) * double(M)) and rounds the
// product once to the output dtype.
// ---------------------------------------------------------------------------------------------
template <bool kAtomOfX, typename A, typename Other>
PDL_HD double merge_atom_f64(int64_t a, A va, int64_t na, int64_t nb, int p, Other other, double& cost) {
  const int64_t lo = a * nb;
  const int64_t hi = lo + nb;
  double g = 0.0;
  for (int64_t b = lo / na; b * na < hi; ++b) {
    const int64_t s = b * na > lo ? b * na : lo;
    const int64_t e = (b + 1) * na < hi ? (b + 1) * na : hi;
    const double len = static_cast<double>(e - s);
    const A vb = other(b);
    const A d = kAtomOfX ? va - vb : vb - va;  // always x - y, as in the walk
    cost = rn::add(cost, rn::mul(len, static_cast<double>(pair_cost(d, p))));
    const double t = rn::mul(static_cast<double>(pair_grad(d, p)), len);
    g = kAtomOfX ? rn::add(g, t) : rn::sub(g, t);
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// The matching of one sorted row pair, shared by both CUDA kernels (block_row_kernel and
// match_rows_kernel). A thread takes ranks r: x's atom of rank r (r < n: value vx, position px in
// the row) and y's (r < m: vy, py), writes their gradients and returns their share of the loss.
// sx(i) / sy(j) read the sorted rows (unequal sizes only). The loss is summed in double, as on the
// CPU; for unequal sizes each segment's cost is counted once, on the atoms of the longer side (each
// of them has at most 2 segments). A is the opmath type of scalar_t.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename A>
struct RowMatch {
  int64_t n, m;
  int p;
  scalar_t* dx;   // this row's outputs; null when that gradient is not wanted
  scalar_t* dy;
  A inv_n;        // 1 / N (equal sizes)
  double inv_nm;  // 1 / (N M) (unequal sizes)

  PDL_HD RowMatch(int64_t n_, int64_t m_, int p_, scalar_t* dx_, scalar_t* dy_)
      : n(n_), m(m_), p(p_), dx(dx_), dy(dy_), inv_n(static_cast<A>(1.0 / static_cast<double>(n_))),
        inv_nm(1.0 / (static_cast<double>(n_) * static_cast<double>(m_))) {}

  template <typename SX, typename SY>
  PDL_HD double rank(int64_t r, A vx, int32_t px, A vy, int32_t py, SX sx, SY sy) const {
    if (n == m) {
      if (r >= n) return 0.0;
      const A d = vx - vy;
      const A g = pair_grad(d, p) * inv_n;  // products only: no contraction, the CPU's bits
      if (dx != nullptr) dx[px] = static_cast<scalar_t>(g);
      if (dy != nullptr) dy[py] = static_cast<scalar_t>(-g);
      return static_cast<double>(pair_cost(d, p));
    }
    const bool cost_on_x = n >= m;
    double part = 0.0;
    if (r < n && (cost_on_x || dx != nullptr)) {
      double cost = 0.0;
      const double g = merge_atom_f64<true>(r, vx, n, m, p, sy, cost);
      if (cost_on_x) part += cost;
      if (dx != nullptr) dx[px] = static_cast<scalar_t>(g * inv_nm);
    }
    if (r < m && (!cost_on_x || dy != nullptr)) {
      double cost = 0.0;
      const double g = merge_atom_f64<false>(r, vy, m, n, p, sx, cost);
      if (!cost_on_x) part += cost;
      if (dy != nullptr) dy[py] = static_cast<scalar_t>(g * inv_nm);
    }
    return part;
  }

  // W_p^p from the sum of every rank's rank().
  PDL_HD scalar_t loss(double sum) const {
    return static_cast<scalar_t>(n == m ? sum / static_cast<double>(n)
                                        : sum / (static_cast<double>(n) * static_cast<double>(m)));
  }
};

// normalize_grad (wasserstein_math.h) with every product and sum rounded: the same bits as the CPU.
template <typename A> PDL_HD A normalize_grad_rn(A h, A f, A s, A r) {
  if (r == A(0)) return A(0);  // a NaN norm falls through and gives NaN
  const A a = A(1) / (r + A(kNormEps));
  return rn::sub(rn::mul(h, a), rn::mul(f / r, rn::mul(rn::mul(s, a), a)));
}

}  // namespace pdl_ext
