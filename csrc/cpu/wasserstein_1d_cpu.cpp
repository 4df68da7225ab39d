// CPU kernel of the fused sort-and-match 1D Wasserstein distance (forward and per-element gradient).
//
// One pass per row pair: load and key-transform both rows, radix sort them (x carrying int32
// positions; y carrying positions only when its gradient is wanted), then match the sorted atoms,
// accumulate W_p^p and write d(W_p^p)/dx straight to the row's positions. The backward of the op is
// then a single scale by the incoming gradient.
#include "wasserstein_1d_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <c10/util/irange.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "../wasserstein_math.h"
#include "radix_sort.h"

namespace pdl_ext {
namespace cpu {
namespace {

// A 64-bit key with its position, for float64 rows (float32 rows pack both into one uint64).
struct KeyPos64 {
  uint64_t key;
  int32_t pos;
};

constexpr int64_t kInsertionMax = 32;   // rows up to this length: insertion sort
constexpr int64_t kSmallRadixMax = 4096;  // rows up to this length: 8-bit digits (small histograms)
constexpr int kHistCounters = 6 << 11;    // enough for 64-bit keys in 11-bit digits (the largest)

template <typename A>
struct RowSort {
  using Key = typename KeyTraits<A>::Key;
  static constexpr int kKeyBits = KeyTraits<A>::kBits;
  // float32 keys: (key << 32 | position) in one word, so a plain integer compare is (key, position).
  using PosItem = std::conditional_t<kKeyBits == 32, uint64_t, KeyPos64>;

  static PosItem make(Key k, int32_t pos) {
    if constexpr (kKeyBits == 32) {
      return (static_cast<uint64_t>(k) << 32) | static_cast<uint32_t>(pos);
    } else {
      return KeyPos64{k, pos};
    }
  }
  static Key key_of(const PosItem& it) {
    if constexpr (kKeyBits == 32) {
      return static_cast<Key>(it >> 32);
    } else {
      return it.key;
    }
  }
  static int32_t pos_of(const PosItem& it) {
    if constexpr (kKeyBits == 32) {
      return static_cast<int32_t>(static_cast<uint32_t>(it));
    } else {
      return it.pos;
    }
  }

  template <typename Item, typename GetKey, typename Less>
  static Item* sort(Item* a, Item* tmp, int64_t n, GetKey key, Less less, uint32_t* hist) {
    if (n <= kInsertionMax) {
      insertion_sort(a, n, less);
      return a;
    }
    if (n <= kSmallRadixMax) return radix_sort<kKeyBits, 8>(a, tmp, n, key, hist);
    return radix_sort<kKeyBits, 11>(a, tmp, n, key, hist);
  }

  // Loads a row, reports NaN, and sorts (key, position) items; returns the sorted buffer.
  template <typename scalar_t>
  static const PosItem* sort_with_pos(const scalar_t* src, int64_t n, PosItem* a, PosItem* tmp,
                                      uint32_t* hist, bool& has_nan) {
    for (int64_t i = 0; i < n; ++i) {
      const A v = static_cast<A>(src[i]);
      has_nan |= (v != v);
      a[i] = make(KeyTraits<A>::to_key(v), static_cast<int32_t>(i));
    }
    if (has_nan) return a;
    auto less = [](const PosItem& u, const PosItem& v) {
      const Key ku = key_of(u), kv = key_of(v);
      return ku < kv || (ku == kv && pos_of(u) < pos_of(v));
    };
    return sort(a, tmp, n, [](const PosItem& it) { return key_of(it); }, less, hist);
  }

  // Loads a row, reports NaN, and sorts its keys only (no positions: no gradient wanted).
  template <typename scalar_t>
  static const Key* sort_keys(const scalar_t* src, int64_t n, Key* a, Key* tmp, uint32_t* hist,
                              bool& has_nan) {
    for (int64_t i = 0; i < n; ++i) {
      const A v = static_cast<A>(src[i]);
      has_nan |= (v != v);
      a[i] = KeyTraits<A>::to_key(v);
    }
    if (has_nan) return a;
    return sort(a, tmp, n, [](Key k) { return k; }, [](Key u, Key v) { return u < v; }, hist);
  }
};

// Matches sorted atoms of x (n) and y (m): returns W_p^p and writes the gradients (if asked).
template <typename A, typename scalar_t, typename XV, typename XP, typename YV, typename YP>
double match_row(int64_t n, int64_t m, int p, XV xv, XP xp, YV yv, YP yp, scalar_t* dx,
                 scalar_t* dy) {
  double sum = 0.0;
  if (n == m) {
    const A inv = static_cast<A>(1.0 / static_cast<double>(n));
    for (int64_t i = 0; i < n; ++i) {
      const A d = xv(i) - yv(i);
      sum += static_cast<double>(pair_cost(d, p));
      if (dx != nullptr || dy != nullptr) {
        const A g = pair_grad(d, p) * inv;
        if (dx != nullptr) dx[xp(i)] = static_cast<scalar_t>(g);
        if (dy != nullptr) dy[yp(i)] = static_cast<scalar_t>(-g);
      }
    }
    return sum / static_cast<double>(n);
  }
  const double total = static_cast<double>(n) * static_cast<double>(m);
  const A inv = static_cast<A>(1.0 / total);
  MergeCursor c;
  A gx = A(0), gy = A(0);
  while (c.i < n && c.j < m) {
    int64_t si, sj;
    const int64_t len = merge_step(c, n, m, si, sj);
    const A d = xv(si) - yv(sj);
    sum += static_cast<double>(len) * static_cast<double>(pair_cost(d, p));
    const A g = pair_grad(d, p) * static_cast<A>(len);
    gx += g;
    gy -= g;
    if (c.i != si) {
      if (dx != nullptr) dx[xp(si)] = static_cast<scalar_t>(gx * inv);
      gx = A(0);
    }
    if (c.j != sj) {
      if (dy != nullptr) dy[yp(sj)] = static_cast<scalar_t>(gy * inv);
      gy = A(0);
    }
  }
  return sum / total;
}

template <typename scalar_t>
void forward_rows(const scalar_t* x, const scalar_t* y, int64_t rows, int64_t n, int64_t m, int p,
                  scalar_t* loss, scalar_t* dx, scalar_t* dy) {
  using A = at::opmath_type<scalar_t>;
  using RS = RowSort<A>;
  using Key = typename RS::Key;
  using PosItem = typename RS::PosItem;
  const int64_t grain = std::max<int64_t>(1, 32768 / (n + m));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    // Scratch reused by every row of this chunk.
    std::vector<PosItem> xa(n), xt(n);
    std::vector<PosItem> ya(dy != nullptr ? m : 0), yt(dy != nullptr ? m : 0);
    std::vector<Key> yk(dy != nullptr ? 0 : m), ykt(dy != nullptr ? 0 : m);
    std::vector<uint32_t> hist(kHistCounters);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * n;
      const scalar_t* yr = y + r * m;
      scalar_t* dxr = dx != nullptr ? dx + r * n : nullptr;
      scalar_t* dyr = dy != nullptr ? dy + r * m : nullptr;
      bool has_nan = false;
      const PosItem* sx = RS::sort_with_pos(xr, n, xa.data(), xt.data(), hist.data(), has_nan);
      auto xv = [sx](int64_t i) { return KeyTraits<A>::from_key(RS::key_of(sx[i])); };
      auto xp = [sx](int64_t i) { return RS::pos_of(sx[i]); };
      double w;
      if (dyr != nullptr) {
        const PosItem* sy = has_nan ? nullptr
                                    : RS::sort_with_pos(yr, m, ya.data(), yt.data(), hist.data(), has_nan);
        w = has_nan ? 0.0
                    : match_row<A>(
                          n, m, p, xv, xp,
                          [sy](int64_t j) { return KeyTraits<A>::from_key(RS::key_of(sy[j])); },
                          [sy](int64_t j) { return RS::pos_of(sy[j]); }, dxr, dyr);
      } else {
        const Key* sy = has_nan ? nullptr
                                : RS::sort_keys(yr, m, yk.data(), ykt.data(), hist.data(), has_nan);
        w = has_nan ? 0.0
                    : match_row<A>(
                          n, m, p, xv, xp, [sy](int64_t j) { return KeyTraits<A>::from_key(sy[j]); },
                          [](int64_t) { return int32_t(0); }, dxr, static_cast<scalar_t*>(nullptr));
      }
      if (has_nan) {
        // Documented policy: NaN anywhere in a row pair makes its distance and gradients NaN.
        const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
        loss[r] = nan;
        if (dxr != nullptr) std::fill(dxr, dxr + n, nan);
        if (dyr != nullptr) std::fill(dyr, dyr + m, nan);
      } else {
        loss[r] = static_cast<scalar_t>(w);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> wasserstein_1d_fwd_cpu(const at::Tensor& x,
                                                                      const at::Tensor& y, int64_t p,
                                                                      bool grad_x, bool grad_y) {
  check_wasserstein_1d_inputs(x, y, p);
  const int64_t n = x.size(-1);
  const int64_t m = y.size(-1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor yc = y.contiguous();
  const int64_t rows = n > 0 ? xc.numel() / n : 0;
  at::Tensor loss = at::empty(x.sizes().slice(0, x.dim() - 1), x.options());
  at::Tensor dx = grad_x ? at::empty_like(xc) : at::empty({0}, x.options());
  at::Tensor dy = grad_y ? at::empty_like(yc) : at::empty({0}, y.options());
  if (rows == 0) return {loss, dx, dy};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "wasserstein_1d_fwd_cpu", [&] {
    forward_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(), rows, n, m,
                           static_cast<int>(p), loss.mutable_data_ptr<scalar_t>(),
                           grad_x ? dx.mutable_data_ptr<scalar_t>() : nullptr,
                           grad_y ? dy.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {loss, dx, dy};
}

}  // namespace cpu
}  // namespace pdl_ext
