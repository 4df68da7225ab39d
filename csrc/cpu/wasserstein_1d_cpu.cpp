// CPU kernels of the fused sort-and-match 1D Wasserstein distance (forward and per-element gradient),
// the per-position channel norms of the normalized op, and its backward.
//
// One pass per row pair: load both rows as order-preserving keys, sort them (a side whose gradient is
// wanted carries int32 positions), then match the sorted atoms, accumulate W_p^p in double and write
// d(W_p^p)/dx (and dy) straight to the row's positions; the backward of the op is then a single scale
// by the incoming gradient. The path (simd_sort.h, PDL_EXT_CPU_PATH) decides how:
//   avx512 / avx2: rows up to the kernels' max_row_* merge sorted with vector code, two at a time;
//     longer ones radix sorted; vectorized key loads; a loss's rows (dx only) matched with vector code.
//   radix: rows shorter than kGroupItems radix sorted in groups that share one histogram, longer ones
//     one by one with the portable primitives (kPortable); scalar matching (match_row).
//   float64 rows: sorted by their float32-rounded keys, then by value within equal keys (Sorted64),
//     or radix sorted on 64-bit keys on the radix path.
//   Rows from kWindowedMin items, on every path: sorted in windows of consecutive ranks, a fraction
//     of the row each (WindowedSide), so that one long row needs little scratch.
// Every path yields the same sorted order and per-pair arithmetic, hence the same gradient bits.
#include "wasserstein_1d_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <limits>
#include <new>
#include <sstream>
#include <type_traits>
#include <vector>

#include "../wasserstein_math.h"
#include "radix_sort.h"
#include "simd_sort.h"

namespace pdl_ext {
namespace cpu {
namespace {

// Scratch of the kernels. A failed allocation throws ScratchAllocFailed (through at::parallel_for, which
// rethrows a worker's exception in the caller); the op's entry turns it into a torch OutOfMemoryError
// that names the bytes asked for, the buffer and the shapes.
struct ScratchAllocFailed {
  size_t bytes;
  const char* what;
};

template <typename T>
std::vector<T> scratch(int64_t count, const char* what) {
  const size_t items = static_cast<size_t>(std::max<int64_t>(count, 0));
  try {
    return std::vector<T>(items);
  } catch (const std::bad_alloc&) {
    throw ScratchAllocFailed{items * sizeof(T), what};
  }
}

// Row loaders: row(r) gives a view whose operator()(i) is element i of row r in opmath precision.
// The normalizing loader scales each element by 1 / (||f[b, :, n]|| + eps) on the fly, so the
// normalized features are never stored.
template <typename scalar_t>
struct PlainRows {
  using A = at::opmath_type<scalar_t>;
  const scalar_t* data;
  int64_t n;
  struct Row {
    const scalar_t* p;
    A operator()(int64_t i) const { return static_cast<A>(p[i]); }
  };
  Row row(int64_t r) const { return Row{data + r * n}; }
};

template <typename scalar_t>
struct NormalizedRows {
  using A = at::opmath_type<scalar_t>;
  const scalar_t* data;  // (B, C, n)
  const A* inv_norm;     // (B, n): 1 / (||f[b, :, i]|| + eps)
  int64_t n, channels;
  struct Row {
    const scalar_t* p;
    const A* s;
    A operator()(int64_t i) const { return static_cast<A>(p[i]) * s[i]; }
  };
  Row row(int64_t r) const { return Row{data + r * n, inv_norm + (r / channels) * n}; }
};

// 64-bit keys (float64): one row at a time, items (key, position) or keys alone.
struct KeyPos64 {
  uint64_t key;
  int32_t pos;
};

constexpr int64_t kInsertionMax = 32;     // rows up to this length: insertion sort
constexpr int64_t kSmallRadixMax = 4096;  // rows up to this length: 8-bit digits (small histograms)
constexpr int kHistCounters = 6 << 11;    // 64-bit keys in 11-bit digits

struct RowSort64 {
  template <typename Item, typename GetKey, typename Less>
  static const Item* sort(Item* a, Item* tmp, int64_t n, GetKey key, Less less, uint32_t* hist) {
    if (n <= kInsertionMax) {
      insertion_sort(a, n, less);
      return a;
    }
    if (n <= kSmallRadixMax) return radix_sort<64, 8>(a, tmp, n, key, hist);
    return radix_sort<64, 11>(a, tmp, n, key, hist);
  }

  template <typename RowView>
  static const KeyPos64* sort_with_pos(RowView row, int64_t n, KeyPos64* a, KeyPos64* tmp, uint32_t* hist,
                                       bool& has_nan) {
    for (int64_t i = 0; i < n; ++i) {
      const double v = row(i);
      has_nan |= (v != v);
      a[i] = KeyPos64{KeyTraits<double>::to_key(v), static_cast<int32_t>(i)};
    }
    if (has_nan) return a;
    auto less = [](const KeyPos64& u, const KeyPos64& v) {
      return u.key < v.key || (u.key == v.key && u.pos < v.pos);
    };
    return sort(a, tmp, n, [](const KeyPos64& it) { return it.key; }, less, hist);
  }

  template <typename RowView>
  static const uint64_t* sort_keys(RowView row, int64_t n, uint64_t* a, uint64_t* tmp, uint32_t* hist,
                                   bool& has_nan) {
    for (int64_t i = 0; i < n; ++i) {
      const double v = row(i);
      has_nan |= (v != v);
      a[i] = KeyTraits<double>::to_key(v);
    }
    if (has_nan) return a;
    return sort(a, tmp, n, [](uint64_t k) { return k; }, [](uint64_t u, uint64_t v) { return u < v; }, hist);
  }
};

template <typename scalar_t>
void write_nan_row(int64_t r, int64_t n, int64_t m, scalar_t* loss, scalar_t* dxr, scalar_t* dyr) {
  // Documented policy: NaN anywhere in a row pair makes its distance and gradients NaN.
  const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
  loss[r] = nan;
  if (dxr != nullptr) std::fill(dxr, dxr + n, nan);
  if (dyr != nullptr) std::fill(dyr, dyr + m, nan);
}

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
  // An atom's gradient sums its segments' len * pair_grad in double, whatever A: one atom of the
  // shorter row spans up to max(n, m) / min(n, m) + 1 segments, and a float sum of that many terms
  // (or a segment length rounded to float) loses the gradient when the lengths differ a lot. The
  // vectorized matching (simd_sort.h) does the same arithmetic in the same order.
  const double total = static_cast<double>(n) * static_cast<double>(m);
  const double inv = 1.0 / total;
  MergeCursor c;
  double gx = 0.0, gy = 0.0;
  while (c.i < n && c.j < m) {
    int64_t si, sj;
    const int64_t len = merge_step(c, n, m, si, sj);
    const A d = xv(si) - yv(sj);
    sum += static_cast<double>(len) * static_cast<double>(pair_cost(d, p));
    const double g = static_cast<double>(pair_grad(d, p)) * static_cast<double>(len);
    gx += g;
    gy -= g;
    // An atom's gradient is stored after each of its segments (the last store is the total) and reset
    // when the walk leaves it: no branch on the walk's data-dependent steps. Rounded to A first, as
    // the vector paths (float16/bfloat16 rows round float gradients).
    if (dx != nullptr) dx[xp(si)] = static_cast<scalar_t>(static_cast<A>(gx * inv));
    if (dy != nullptr) dy[yp(sj)] = static_cast<scalar_t>(static_cast<A>(gy * inv));
    gx = c.i != si ? 0.0 : gx;
    gy = c.j != sj ? 0.0 : gy;
  }
  return sum / total;
}

template <typename scalar_t, typename XL, typename YL>
void forward_rows_f64(XL xl, YL yl, int64_t rows, int64_t n, int64_t m, int p, scalar_t* loss, scalar_t* dx,
                      scalar_t* dy) {
  using A = double;
  auto from_key = [](uint64_t k) { return KeyTraits<double>::from_key(k); };
  const int64_t grain = std::max<int64_t>(1, 32768 / (n + m));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    // Scratch reused by every row of this chunk.
    auto xa = scratch<KeyPos64>(n, "x's sort buffers"), xt = scratch<KeyPos64>(n, "x's sort buffers");
    auto ya = scratch<KeyPos64>(dy != nullptr ? m : 0, "y's sort buffers");
    auto yt = scratch<KeyPos64>(dy != nullptr ? m : 0, "y's sort buffers");
    auto yk = scratch<uint64_t>(dy != nullptr ? 0 : m, "y's sort buffers");
    auto ykt = scratch<uint64_t>(dy != nullptr ? 0 : m, "y's sort buffers");
    auto hist = scratch<uint32_t>(kHistCounters, "radix counters");
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* dxr = dx != nullptr ? dx + r * n : nullptr;
      scalar_t* dyr = dy != nullptr ? dy + r * m : nullptr;
      bool has_nan = false;
      const KeyPos64* sx = RowSort64::sort_with_pos(xl.row(r), n, xa.data(), xt.data(), hist.data(), has_nan);
      auto xv = [&](int64_t i) { return from_key(sx[i].key); };
      auto xp = [&](int64_t i) { return sx[i].pos; };
      double w = 0.0;
      if (dyr != nullptr) {
        const KeyPos64* sy = RowSort64::sort_with_pos(yl.row(r), m, ya.data(), yt.data(), hist.data(), has_nan);
        if (!has_nan) {
          w = match_row<A>(n, m, p, xv, xp, [&](int64_t j) { return from_key(sy[j].key); },
                           [&](int64_t j) { return sy[j].pos; }, dxr, dyr);
        }
      } else {
        const uint64_t* sy = RowSort64::sort_keys(yl.row(r), m, yk.data(), ykt.data(), hist.data(), has_nan);
        if (!has_nan) {
          w = match_row<A>(n, m, p, xv, xp, [&](int64_t j) { return from_key(sy[j]); },
                           [](int64_t) { return int32_t(0); }, dxr, static_cast<scalar_t*>(nullptr));
        }
      }
      if (has_nan) {
        write_nan_row(r, n, m, loss, dxr, dyr);
      } else {
        loss[r] = static_cast<scalar_t>(w);
      }
    }
  });
}

inline int bit_width(uint64_t v) { return v == 0 ? 0 : 64 - __builtin_clzll(v); }

// 32-bit keys (float32, and float16/bfloat16 widened to float32): rows are sorted in groups of about
// kGroupItems items, each item one word (row in group | key | position), so that short rows share
// one radix sort (and its histogram cost) instead of paying it row by row.
constexpr int64_t kGroupItems = 8192;

struct PackedRows {
  int pos_bits;  // 0 when positions are not needed (no gradient for this side)

  uint32_t key(uint64_t item) const { return static_cast<uint32_t>(item >> pos_bits); }
  int32_t pos(uint64_t item) const {
    return static_cast<int32_t>(item & ((uint64_t(1) << pos_bits) - 1));
  }

  // Loads rows [r0, r0 + rows) of length n (NaN flags or'ed into has_nan[r - r0]) and sorts them by
  // (row, key, position); returns the sorted buffer (a or tmp). Row r0 + k occupies [k n, (k + 1) n).
  template <int kRadix, typename Loader>
  const uint64_t* load_and_sort(const Loader& load, int64_t r0, int64_t rows, int64_t n, uint64_t* a,
                                uint64_t* tmp, uint32_t* counts, uint8_t* has_nan) const {
    const int key_bits = 32 + bit_width(static_cast<uint64_t>(rows - 1));
    const RadixHistogram<kRadix> h{counts, pos_bits, (key_bits + kRadix - 1) / kRadix};
    const uint64_t pos_mask = pos_bits > 0 ? ~uint64_t(0) : 0;  // no position field to fill
    h.clear();
    for (int64_t k = 0; k < rows; ++k) {
      const auto row = load.row(r0 + k);
      uint64_t* out = a + k * n;
      const uint64_t row_field = static_cast<uint64_t>(k) << (32 + pos_bits);
      bool nan = false;
      for (int64_t i = 0; i < n; ++i) {
        const float v = row(i);
        nan |= (v != v);
        const uint64_t item = row_field | (static_cast<uint64_t>(KeyTraits<float>::to_key(v)) << pos_bits) |
                              (static_cast<uint64_t>(i) & pos_mask);
        out[i] = item;
        h.add(item);
      }
      has_nan[k] |= nan;
    }
    return radix_passes<kRadix>(a, tmp, rows * n, [](uint64_t v) { return v; }, h);
  }

  template <typename Loader>
  const uint64_t* sort(const Loader& load, int64_t r0, int64_t rows, int64_t n, uint64_t* a, uint64_t* tmp,
                       uint32_t* counts, uint8_t* has_nan) const {
    if (rows * n >= 2048) return load_and_sort<11>(load, r0, rows, n, a, tmp, counts, has_nan);
    return load_and_sort<8>(load, r0, rows, n, a, tmp, counts, has_nan);
  }
};

template <typename scalar_t, typename XL, typename YL>
void forward_rows_f32(XL xl, YL yl, int64_t rows, int64_t n, int64_t m, int p, scalar_t* loss, scalar_t* dx,
                      scalar_t* dy) {
  using A = float;
  const int64_t group = std::clamp<int64_t>(kGroupItems / std::max(n, m), 1, std::max<int64_t>(rows, 1));
  const int64_t num_groups = (rows + group - 1) / group;
  const PackedRows px{dx != nullptr ? bit_width(static_cast<uint64_t>(n - 1)) : 0};
  const PackedRows py{dy != nullptr ? bit_width(static_cast<uint64_t>(m - 1)) : 0};
  at::parallel_for(0, num_groups, 1, [&](int64_t begin, int64_t end) {
    // Scratch reused by every group of this chunk.
    auto xa = scratch<uint64_t>(group * n, "x's sort buffers"), xt = scratch<uint64_t>(group * n, "x's sort buffers");
    auto ya = scratch<uint64_t>(group * m, "y's sort buffers"), yt = scratch<uint64_t>(group * m, "y's sort buffers");
    auto counts = scratch<uint32_t>(5 << 11, "radix counters");  // up to 32 key + 13 row bits in 11-bit digits
    auto has_nan = scratch<uint8_t>(group, "NaN flags");
    for (int64_t g = begin; g < end; ++g) {
      const int64_t r0 = g * group;
      const int64_t gr = std::min(group, rows - r0);
      std::fill(has_nan.begin(), has_nan.end(), uint8_t(0));
      const uint64_t* sx = px.sort(xl, r0, gr, n, xa.data(), xt.data(), counts.data(), has_nan.data());
      const uint64_t* sy = py.sort(yl, r0, gr, m, ya.data(), yt.data(), counts.data(), has_nan.data());
      for (int64_t k = 0; k < gr; ++k) {
        const int64_t r = r0 + k;
        scalar_t* dxr = dx != nullptr ? dx + r * n : nullptr;
        scalar_t* dyr = dy != nullptr ? dy + r * m : nullptr;
        if (has_nan[k]) {
          write_nan_row(r, n, m, loss, dxr, dyr);
          continue;
        }
        const uint64_t* rx = sx + k * n;
        const uint64_t* ry = sy + k * m;
        loss[r] = static_cast<scalar_t>(match_row<A>(
            n, m, p, [&](int64_t i) { return KeyTraits<float>::from_key(px.key(rx[i])); },
            [&](int64_t i) { return px.pos(rx[i]); },
            [&](int64_t j) { return KeyTraits<float>::from_key(py.key(ry[j])); },
            [&](int64_t j) { return py.pos(ry[j]); }, dxr, dyr));
      }
    }
  });
}

// With vectorized kernels (simd_sort.h: AVX-512 or AVX2), 32-bit keys are sorted row by row: a side
// whose gradient is wanted sorts 64-bit items (key << 32 | position), the other side its 32-bit keys
// alone. Rows up to the kernels' max_row_* use their merge sort, two rows at a time; longer rows the
// radix sort (3 passes of 11 bits over the key), which then costs less than the merge sort's
// log2(n / block) passes.

// One or two row slots of one side (x or y): load keys, sort, read back values and positions. Only
// what the rows need is allocated: a second slot when two rows are merge sorted together, the
// staging row for rows that are not float32 already, the float gradients of a half-precision loss.
struct SimdSide {
  const SimdKernels* kern;
  bool pos;  // sort positions with the keys
  int64_t n;
  std::vector<float> stage;  // a row as float32, unless it is one already
  std::vector<uint64_t> a64[2], t64[2];
  std::vector<uint32_t> a32[2], t32[2];
  std::vector<uint32_t> hist;          // radix counters (long rows)
  std::vector<float> grad;             // float gradients of a half-precision row
  uint64_t* s64[2] = {nullptr, nullptr};  // the sorted rows (pos) ...
  uint32_t* s32[2] = {nullptr, nullptr};  // ... or their sorted keys (!pos)

  SimdSide(const SimdKernels* k, bool with_pos, int64_t len, int slots, bool need_stage, bool need_grad)
      : kern(k),
        pos(with_pos),
        n(len),
        stage(scratch<float>(need_stage ? len : 0, "a row widened to float32")),
        hist(scratch<uint32_t>(3 << 11, "radix counters")),
        grad(scratch<float>(need_grad ? len : 0, "float gradients of a half-precision row")) {
    for (int k = 0; k < slots; ++k) {
      if (pos) {
        a64[k] = scratch<uint64_t>(simd_sort_capacity(n), "sort buffers of (key, position) items");
        t64[k] = scratch<uint64_t>(simd_sort_capacity(n), "sort buffers of (key, position) items");
      } else {
        a32[k] = scratch<uint32_t>(simd_sort_capacity(n), "sort buffers of keys");
        t32[k] = scratch<uint32_t>(simd_sort_capacity(n), "sort buffers of keys");
      }
    }
  }

  // Loads the keys of a row into slot k; false when the row holds a NaN.
  template <typename RowView>
  bool load(int k, RowView row) {
    const float* src;
    if constexpr (std::is_same_v<RowView, PlainRows<float>::Row>) {
      src = row.p;
    } else {
      if constexpr (std::is_same_v<RowView, PlainRows<at::Half>::Row>) {
        if (kern->widen_f16 != nullptr) {
          kern->widen_f16(reinterpret_cast<const uint16_t*>(row.p), n, stage.data());
        } else {
          for (int64_t i = 0; i < n; ++i) stage[i] = row(i);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) stage[i] = row(i);
      }
      src = stage.data();
    }
    return pos ? !kern->keys_u64(src, n, a64[k].data()) : !kern->keys_u32(src, n, a32[k].data());
  }

  void sort_one(int k) {
    if (pos) {
      s64[k] = n <= kern->max_row_u64 ? kern->sort_u64(a64[k].data(), t64[k].data(), n)
                                  : radix_sort<32, 11>(a64[k].data(), t64[k].data(), n,
                                                       [](uint64_t v) { return v >> 32; }, hist.data());
    } else {
      s32[k] = n <= kern->max_row_u32 ? kern->sort_u32(a32[k].data(), t32[k].data(), n)
                                  : radix_sort<32, 11>(a32[k].data(), t32[k].data(), n,
                                                       [](uint32_t v) { return v; }, hist.data());
    }
  }

  // Sorts the loaded slots k < count whose ok[k] is set.
  void sort(int count, const bool* ok) {
    if (count == 2 && ok[0] && ok[1] && n <= (pos ? kern->max_row_u64 : kern->max_row_u32)) {
      if (pos) {
        sort_pair(kern->sort2_u64, a64, t64, s64);
      } else {
        sort_pair(kern->sort2_u32, a32, t32, s32);
      }
      return;
    }
    for (int k = 0; k < count; ++k) {
      if (ok[k]) sort_one(k);
    }
  }

  template <typename T, typename Sort2>
  void sort_pair(Sort2 sort2, std::vector<T>* a, std::vector<T>* t, T** out) {
    T* const as[2] = {a[0].data(), a[1].data()};
    T* const ts[2] = {t[0].data(), t[1].data()};
    sort2(as, ts, n, out);
  }

  float value(int k, int64_t i) const {
    return KeyTraits<float>::from_key(pos ? static_cast<uint32_t>(s64[k][i] >> 32) : s32[k][i]);
  }
  int32_t position(int k, int64_t i) const { return static_cast<int32_t>(static_cast<uint32_t>(s64[k][i])); }
};

template <typename scalar_t, typename XL, typename YL>
void forward_rows_f32_rowwise(const SimdKernels* kern, XL xl, YL yl, int64_t rows, int64_t n, int64_t m, int p, scalar_t* loss,
                           scalar_t* dx, scalar_t* dy) {
  using A = float;
  const int64_t grain = std::max<int64_t>(2, 16384 / (n + m));
  // Two rows at a time when both sides merge sort them together (short rows); else one, and one
  // slot of scratch per side (long rows are radix sorted one by one anyway).
  const bool pairs = n <= (dx != nullptr ? kern->max_row_u64 : kern->max_row_u32) &&
                     m <= (dy != nullptr ? kern->max_row_u64 : kern->max_row_u32);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    constexpr bool narrow = !std::is_same_v<scalar_t, float>;  // float16 / bfloat16 rows
    constexpr bool stage_x = !std::is_same_v<decltype(xl.row(0)), PlainRows<float>::Row>;
    constexpr bool stage_y = !std::is_same_v<decltype(yl.row(0)), PlainRows<float>::Row>;
    const int slots = pairs && end - begin >= 2 ? 2 : 1;
    // Scratch reused by every row of this chunk.
    SimdSide sx(kern, dx != nullptr, n, slots, stage_x, narrow && dx != nullptr && dy == nullptr);
    SimdSide sy(kern, dy != nullptr, m, slots, stage_y, false);
    for (int64_t r0 = begin; r0 < end; r0 += slots) {
      const int count = static_cast<int>(std::min<int64_t>(slots, end - r0));
      bool ok_x[2] = {false, false}, ok_y[2] = {false, false}, ok[2];
      for (int k = 0; k < count; ++k) {
        ok_x[k] = sx.load(k, xl.row(r0 + k));
        ok_y[k] = sy.load(k, yl.row(r0 + k));
        ok[k] = ok_x[k] && ok_y[k];
      }
      sx.sort(count, ok);
      sy.sort(count, ok);
      for (int k = 0; k < count; ++k) {
        const int64_t r = r0 + k;
        scalar_t* dxr = dx != nullptr ? dx + r * n : nullptr;
        scalar_t* dyr = dy != nullptr ? dy + r * m : nullptr;
        if (!ok[k]) {
          write_nan_row(r, n, m, loss, dxr, dyr);
          continue;
        }
        if (dxr != nullptr && dyr == nullptr) {  // a loss: x against a fixed target
          // The vector match writes float gradients: straight into dx, or into scratch for half types.
          float* g = std::is_same_v<scalar_t, float> ? reinterpret_cast<float*>(dxr) : sx.grad.data();
          const double total = static_cast<double>(n) * static_cast<double>(m);
          bool matched = true;
          double w = 0.0;
          if (n == m) {
            w = kern->match_equal(sx.s64[k], sy.s32[k], n, p, g) / static_cast<double>(n);
          } else if (total < 0x1p52 && kern->match_unequal != nullptr) {
            w = kern->match_unequal(sx.s64[k], sy.s32[k], n, m, p, g) / total;
          } else {
            matched = false;
          }
          if (matched) {
            if constexpr (!std::is_same_v<scalar_t, float>) {
              for (int64_t i = 0; i < n; ++i) dxr[i] = static_cast<scalar_t>(g[i]);
            }
            loss[r] = static_cast<scalar_t>(w);
            continue;
          }
        }
        loss[r] = static_cast<scalar_t>(match_row<A>(
            n, m, p, [&](int64_t i) { return sx.value(k, i); }, [&](int64_t i) { return sx.position(k, i); },
            [&](int64_t j) { return sy.value(k, j); },
            [&](int64_t j) { return dyr != nullptr ? sy.position(k, j) : 0; }, dxr, dyr));
      }
    }
  });
}

// float64 on AVX-512: a row is sorted as 64-bit items (key of the value rounded to float32 << 32 |
// position), the float32 path's sort, then each run of equal float32 keys (values that round alike:
// rare, except exact ties, already in position order) is re-sorted stably by the float64 value.
// Rounding to float32 is monotone, so the result is the exact (value, position) order.
struct Sorted64 {
  int64_t n;
  std::vector<double> vals;   // the row
  std::vector<float> narrow;  // the row rounded to float32
  SimdSide side;              // sorts narrow's keys with positions, as the float32 path
  uint64_t* s = nullptr;      // the sorted items

  Sorted64(const SimdKernels* k, int64_t len)
      : n(len),
        vals(scratch<double>(len, "a float64 row")),
        narrow(scratch<float>(len, "a float64 row rounded to float32")),
        side(k, true, len, 1, false, false) {}

  // Loads and sorts a row; false when it holds a NaN (a float64 NaN rounds to a float32 NaN).
  template <typename RowView>
  bool sort(RowView row) {
    for (int64_t i = 0; i < n; ++i) {
      const double v = row(i);
      vals[i] = v + 0.0;  // -0 -> +0, as KeyTraits<double>::to_key: the values the other paths match
      narrow[i] = static_cast<float>(v);
    }
    if (!side.load(0, PlainRows<float>::Row{narrow.data()})) return false;
    side.sort_one(0);
    s = side.s64[0];
    refine();
    return true;
  }

  void refine() {
    const double* v = vals.data();
    auto less = [v](uint64_t u, uint64_t w) {  // by value, ties by position (stable)
      const double a = v[static_cast<uint32_t>(u)], b = v[static_cast<uint32_t>(w)];
      return a < b || (a == b && static_cast<uint32_t>(u) < static_cast<uint32_t>(w));
    };
    for (int64_t i = 1; i < n; ++i) {
      if (((s[i] ^ s[i - 1]) >> 32) != 0) continue;  // the common case: keys differ
      const int64_t b = i - 1;
      int64_t e = i + 1;
      while (e < n && ((s[e] ^ s[b]) >> 32) == 0) ++e;
      if (e - b <= kInsertionMax) {
        insertion_sort(s + b, e - b, less);
      } else if (!std::is_sorted(s + b, s + e, less)) {  // long runs are mostly exact ties, in order
        std::sort(s + b, s + e, less);  // a strict total order: the stable order
      }
      i = e;  // s[e] starts another key
    }
  }

  double value(int64_t i) const { return vals[static_cast<uint32_t>(s[i])]; }
  int32_t position(int64_t i) const { return static_cast<int32_t>(static_cast<uint32_t>(s[i])); }
};

template <typename scalar_t, typename XL, typename YL>
void forward_rows_f64_simd(const SimdKernels* kern, XL xl, YL yl, int64_t rows, int64_t n, int64_t m, int p, scalar_t* loss, scalar_t* dx,
                           scalar_t* dy) {
  const int64_t grain = std::max<int64_t>(1, 16384 / (n + m));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    Sorted64 sx(kern, n), sy(kern, m);  // scratch reused by every row of this chunk
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* dxr = dx != nullptr ? dx + r * n : nullptr;
      scalar_t* dyr = dy != nullptr ? dy + r * m : nullptr;
      if (!sx.sort(xl.row(r)) || !sy.sort(yl.row(r))) {
        write_nan_row(r, n, m, loss, dxr, dyr);
        continue;
      }
      if constexpr (std::is_same_v<scalar_t, double>) {
        if (n == m && dyr == nullptr && dxr != nullptr && kern->match_equal_f64 != nullptr) {
          loss[r] = kern->match_equal_f64(sx.s, sx.vals.data(), sy.s, sy.vals.data(), n, p, dxr) / static_cast<double>(n);
          continue;
        }
      }
      loss[r] = static_cast<scalar_t>(match_row<double>(
          n, m, p, [&](int64_t i) { return sx.value(i); }, [&](int64_t i) { return sx.position(i); },
          [&](int64_t j) { return sy.value(j); }, [&](int64_t j) { return sy.position(j); }, dxr, dyr));
    }
  });
}

// Long rows (either side at least kWindowedMin items) are sorted in windows: runs of consecutive
// ranks of at most `cap` items (1/8 of the row, at least kWindowMinItems), each gathered from the row
// by its range of keys and radix sorted on its own, one at a time, while the matching (match_row)
// reads the atoms in rank order. The windows come from a histogram of the keys' top 16 bits, refined
// by the next 16 bits where one bucket holds more than cap items; more than cap equal keys are split
// by position, which is their order. A side then holds one window, not sorted copies of the row:
// scratch 2 B per float32 item of a side with positions, 1 B without (vs 16 and 8 B per item), for
// one more read of the row per window. The path depends on the row lengths only, so a row gives the
// same bits whatever batch it sits in and whatever the thread count.
constexpr int64_t kWindowedMin = int64_t(1) << 22;
constexpr int64_t kWindowFraction = 8;
constexpr int64_t kWindowMinItems = int64_t(1) << 16;
constexpr int kDigitBits = 16;
constexpr int64_t kDigits = int64_t(1) << kDigitBits;

bool use_windows(int64_t n, int64_t m) { return std::max(n, m) >= kWindowedMin; }

// One side's sorted windows. A: float or double (the keys of KeyTraits<A>); kPos: items carry positions.
template <typename A, bool kPos>
struct WindowedSide {
  using KT = KeyTraits<A>;
  using Key = typename KT::Key;
  static constexpr bool kF32 = std::is_same_v<A, float>;
  // float: one word per item (key << 32 | position, or the key); double: (key, position) or the key.
  using Item = std::conditional_t<kF32, std::conditional_t<kPos, uint64_t, uint32_t>,
                                  std::conditional_t<kPos, KeyPos64, uint64_t>>;
  struct Window {
    Key lo, hi;           // the keys it holds, inclusive
    int64_t skip, count;  // count items; a piece of a run of one key (split) skips `skip` of them
    bool split;
  };

  int64_t n = 0, cap = 0;
  std::vector<Window> windows;
  std::vector<Item> a, t;                   // the window's items and radix scratch (cap + 1)
  static constexpr int kLevels = KT::kBits / kDigitBits;  // the last one (shift 0) counts whole keys
  std::vector<uint32_t> hist[kLevels];      // per refinement level; hist[0] also radix counters
  const Item* s = nullptr;                  // the sorted window: ranks [begin, end)
  size_t next = 0;
  int64_t begin = 0, end = 0;

  static Key key_of(const Item& it) {
    if constexpr (kF32 && kPos) {
      return static_cast<Key>(it >> 32);
    } else if constexpr (kPos) {
      return it.key;
    } else {
      return it;
    }
  }
  static int32_t pos_of(const Item& it) {
    if constexpr (kF32 && kPos) {
      return static_cast<int32_t>(static_cast<uint32_t>(it));
    } else if constexpr (kPos) {
      return it.pos;
    } else {
      return 0;
    }
  }
  static Item make(Key k, int64_t i) {
    if constexpr (kF32 && kPos) {
      return (static_cast<uint64_t>(k) << 32) | static_cast<uint64_t>(i);
    } else if constexpr (kPos) {
      return KeyPos64{k, static_cast<int32_t>(i)};
    } else {
      return k;
    }
  }

  // Plans the windows of a row of len items; false when it holds a NaN.
  template <typename RowView>
  bool plan(RowView row, int64_t len) {
    const int64_t want = std::min(len, std::max(kWindowMinItems, (len + kWindowFraction - 1) / kWindowFraction));
    if (static_cast<int64_t>(a.size()) < want + 1) {  // reused by the chunk's next rows (same length)
      a = std::vector<Item>();
      t = std::vector<Item>();
      a = scratch<Item>(want + 1, "sort buffers of one window of a long row");
      t = scratch<Item>(want + 1, "sort buffers of one window of a long row");
    }
    n = len;
    cap = want;
    windows.clear();
    next = 0;
    begin = end = 0;
    uint32_t* h = level_hist(0);
    bool nan = false;
    for (int64_t i = 0; i < n; ++i) {
      const A v = row(i);
      nan |= (v != v);
      ++h[KT::to_key(v) >> (KT::kBits - kDigitBits)];
    }
    if (nan) return false;
    pack(row, Key(0), KT::kBits - kDigitBits, 0);
    return true;
  }

  uint32_t* level_hist(int level) {
    if (hist[level].empty()) hist[level] = scratch<uint32_t>(kDigits, "key histograms");
    std::fill(hist[level].begin(), hist[level].end(), 0u);
    return hist[level].data();
  }

  // Turns the histogram of `level` (keys whose bits above shift + 16 are `prefix`, counted by their
  // 16 bits from `shift`) into windows, in key order.
  template <typename RowView>
  void pack(RowView row, Key prefix, int shift, int level) {
    const uint32_t* h = hist[level].data();
    const Key base = shift + kDigitBits >= KT::kBits ? Key(0) : static_cast<Key>(prefix << (shift + kDigitBits));
    const Key low = shift == 0 ? Key(0) : static_cast<Key>((Key(1) << shift) - 1);
    int64_t acc = 0, b0 = 0, b1 = 0;
    const auto flush = [&] {
      if (acc > 0) {
        windows.push_back({static_cast<Key>(base | (Key(b0) << shift)), static_cast<Key>(base | (Key(b1) << shift) | low), 0,
                           acc, false});
      }
      acc = 0;
    };
    for (int64_t b = 0; b < kDigits; ++b) {
      const int64_t c = h[b];
      if (c == 0) continue;
      if (c > cap) {  // one bucket over a window: its keys' next digit, or split by position
        flush();
        const Key top = static_cast<Key>((prefix << kDigitBits) | Key(b));
        if (level + 1 >= kLevels) {  // shift 0: c equal keys
          for (int64_t k = 0; k < c; k += cap) windows.push_back({top, top, k, std::min(cap, c - k), true});
        } else {
          uint32_t* sub = level_hist(level + 1);
          const int sub_shift = shift - kDigitBits;
          for (int64_t i = 0; i < n; ++i) {
            const Key k = KT::to_key(row(i));
            if ((k >> shift) == top) ++sub[(k >> sub_shift) & Key(kDigits - 1)];
          }
          pack(row, top, sub_shift, level + 1);
        }
        continue;
      }
      if (acc + c > cap) flush();
      if (acc == 0) b0 = b;
      b1 = b;
      acc += c;
    }
    flush();
  }

  // Gathers and sorts the next window.
  template <typename RowView>
  void load_next(RowView row) {
    TORCH_INTERNAL_ASSERT(next < windows.size(), "wasserstein_1d: read past the last window");
    const Window w = windows[next++];
    Item* out = a.data();
    int64_t count = 0;
    if (!w.split) {
      const Key span = static_cast<Key>(w.hi - w.lo);
      for (int64_t i = 0; i < n; ++i) {  // branch-free: out has room for one item more
        const Key k = KT::to_key(row(i));
        out[count] = make(k, i);
        count += static_cast<Key>(k - w.lo) <= span ? 1 : 0;
      }
    } else {  // a piece of a run of one key: its items in position order, already sorted
      int64_t seen = 0;
      for (int64_t i = 0; i < n && count < w.count; ++i) {
        const Key k = KT::to_key(row(i));
        if (k != w.lo) continue;
        if (seen++ >= w.skip) out[count++] = make(k, i);
      }
    }
    TORCH_INTERNAL_ASSERT(count == w.count, "wasserstein_1d: a window gathered ", count, " items, planned ", w.count);
    if (w.lo == w.hi) {
      s = out;
    } else if constexpr (kF32) {
      s = radix_sort<32, 11>(out, t.data(), count, [](Item v) { return key_of(v); }, hist[0].data());
    } else {
      auto less = [](const Item& u, const Item& v) {
        return key_of(u) < key_of(v) || (key_of(u) == key_of(v) && pos_of(u) < pos_of(v));
      };
      s = RowSort64::sort(out, t.data(), count, [](const Item& v) { return key_of(v); }, less, hist[0].data());
    }
    begin = end;
    end = begin + count;
  }

  template <typename RowView>
  void ensure(int64_t i, RowView row) {
    while (i >= end) load_next(row);
  }
  A value(int64_t i) const { return KT::from_key(key_of(s[i - begin])); }
  int32_t position(int64_t i) const { return pos_of(s[i - begin]); }
};

template <typename scalar_t, typename XL, typename YL>
void forward_rows_windowed(XL xl, YL yl, int64_t rows, int64_t n, int64_t m, int p, scalar_t* loss, scalar_t* dx,
                           scalar_t* dy) {
  using A = at::opmath_type<scalar_t>;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    const auto run = [&](auto& sx, auto& sy) {
      for (int64_t r = begin; r < end; ++r) {
        const auto xr = xl.row(r);
        const auto yr = yl.row(r);
        scalar_t* dxr = dx != nullptr ? dx + r * n : nullptr;
        scalar_t* dyr = dy != nullptr ? dy + r * m : nullptr;
        if (!sx.plan(xr, n) || !sy.plan(yr, m)) {
          write_nan_row(r, n, m, loss, dxr, dyr);
          continue;
        }
        loss[r] = static_cast<scalar_t>(match_row<A>(
            n, m, p,
            [&](int64_t i) {
              sx.ensure(i, xr);
              return sx.value(i);
            },
            [&](int64_t i) {
              sx.ensure(i, xr);
              return sx.position(i);
            },
            [&](int64_t j) {
              sy.ensure(j, yr);
              return sy.value(j);
            },
            [&](int64_t j) {
              sy.ensure(j, yr);
              return sy.position(j);
            },
            dxr, dyr));
      }
    };
    if (dx != nullptr && dy != nullptr) {
      WindowedSide<A, true> sx, sy;
      run(sx, sy);
    } else if (dx != nullptr) {
      WindowedSide<A, true> sx;
      WindowedSide<A, false> sy;
      run(sx, sy);
    } else if (dy != nullptr) {
      WindowedSide<A, false> sx;
      WindowedSide<A, true> sy;
      run(sx, sy);
    } else {
      WindowedSide<A, false> sx, sy;
      run(sx, sy);
    }
  });
}

// Runs the float32 (grouped) or float64 (per-row) forward on the given row loaders.
// Without a vectorized set, long float32 rows still take the per-row path of forward_rows_f32_rowwise
// (their grouped radix sort holds one row anyway), with these portable primitives: no merge sort
// (max_row 0: every row is radix sorted), scalar key loads and matching. Then the side without a
// gradient sorts 32-bit keys, and the match of a loss skips its generic walk.
constexpr int64_t kPortablePerRowMin = kGroupItems;

bool portable_keys_u64(const float* src, int64_t n, uint64_t* out) {
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    nan |= src[i] != src[i];
    out[i] = (static_cast<uint64_t>(KeyTraits<float>::to_key(src[i])) << 32) | static_cast<uint64_t>(i);
  }
  return nan;
}

bool portable_keys_u32(const float* src, int64_t n, uint32_t* out) {
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    nan |= src[i] != src[i];
    out[i] = KeyTraits<float>::to_key(src[i]);
  }
  return nan;
}

double portable_match_equal(const uint64_t* x, const uint32_t* y, int64_t n, int p, float* dx) {
  const float inv = static_cast<float>(1.0 / static_cast<double>(n));
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {  // match_row's equal-length loop
    const float d = KeyTraits<float>::from_key(static_cast<uint32_t>(x[i] >> 32)) - KeyTraits<float>::from_key(y[i]);
    sum += static_cast<double>(pair_cost(d, p));
    dx[static_cast<uint32_t>(x[i])] = pair_grad(d, p) * inv;
  }
  return sum;
}

const SimdKernels kPortable{"radix",           0,       0,       nullptr, nullptr, nullptr, nullptr, portable_keys_u64,
                            portable_keys_u32, nullptr, portable_match_equal, nullptr, nullptr};

template <typename scalar_t, typename XL, typename YL>
void forward_rows(XL xl, YL yl, int64_t rows, int64_t n, int64_t m, int p, scalar_t* loss, scalar_t* dx,
                  scalar_t* dy) {
  const SimdKernels* kern = simd_kernels();  // nullptr: the portable radix path
  if (use_windows(n, m)) {
    forward_rows_windowed<scalar_t>(xl, yl, rows, n, m, p, loss, dx, dy);
  } else if constexpr (std::is_same_v<at::opmath_type<scalar_t>, double>) {
    if (kern != nullptr) {
      forward_rows_f64_simd<scalar_t>(kern, xl, yl, rows, n, m, p, loss, dx, dy);
    } else {
      forward_rows_f64<scalar_t>(xl, yl, rows, n, m, p, loss, dx, dy);
    }
  } else if (kern != nullptr) {
    forward_rows_f32_rowwise<scalar_t>(kern, xl, yl, rows, n, m, p, loss, dx, dy);
  } else if (std::max(n, m) >= kPortablePerRowMin) {
    forward_rows_f32_rowwise<scalar_t>(&kPortable, xl, yl, rows, n, m, p, loss, dx, dy);
  } else {
    forward_rows_f32<scalar_t>(xl, yl, rows, n, m, p, loss, dx, dy);
  }
}

}  // namespace

namespace {

// Runs a kernel body; a failed scratch allocation becomes a torch OutOfMemoryError (RuntimeError
// subclass) naming the bytes, the buffer and the shapes, instead of a bare std::bad_alloc.
template <typename Body>
void with_scratch_errors(const char* op, const ForwardPlan& f, Body body) {
  const auto shapes = [&] {
    std::ostringstream s;
    s << "x rows " << f.rows << " x " << f.n << ", y rows " << f.rows << " x " << f.m << ", "
      << f.x.scalar_type();
    return s.str();
  };
  try {
    body();
  } catch (const ScratchAllocFailed& e) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, op, ": out of memory: could not allocate ", e.bytes,
                     " bytes of CPU scratch (", e.what, ") for ", shapes());
  } catch (const std::bad_alloc&) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, op, ": out of memory in the CPU kernel for ", shapes());
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> wasserstein_1d_fwd_cpu(const at::Tensor& x,
                                                                      const at::Tensor& y, int64_t p,
                                                                      bool grad_x, bool grad_y) {
  const ForwardPlan f = plan_forward(x, y, p, grad_x, grad_y, /*normalized=*/false);
  if (f.rows > 0) {
    with_scratch_errors("wasserstein_1d", f, [&] {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "wasserstein_1d_fwd_cpu", [&] {
        forward_rows<scalar_t>(PlainRows<scalar_t>{f.x.const_data_ptr<scalar_t>(), f.n},
                               PlainRows<scalar_t>{f.y.const_data_ptr<scalar_t>(), f.m}, f.rows, f.n, f.m,
                               static_cast<int>(p), f.loss.mutable_data_ptr<scalar_t>(),
                               grad_x ? f.dx.mutable_data_ptr<scalar_t>() : nullptr,
                               grad_y ? f.dy.mutable_data_ptr<scalar_t>() : nullptr);
      });
    });
  }
  return {f.loss, f.dx, f.dy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> normalized_wasserstein_1d_fwd_cpu(
    const at::Tensor& x, const at::Tensor& y, int64_t p, bool grad_x, bool grad_y) {
  const ForwardPlan f = plan_forward(x, y, p, grad_x, grad_y, /*normalized=*/true);
  if (f.rows > 0) {
    with_scratch_errors("normalized_wasserstein_1d", f, [&] {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "normalized_wasserstein_1d_fwd_cpu", [&] {
        using A = at::opmath_type<scalar_t>;
        forward_rows<scalar_t>(
            NormalizedRows<scalar_t>{f.x.const_data_ptr<scalar_t>(), f.inv_x.const_data_ptr<A>(), f.n, f.channels},
            NormalizedRows<scalar_t>{f.y.const_data_ptr<scalar_t>(), f.inv_y.const_data_ptr<A>(), f.m, f.channels},
            f.rows, f.n, f.m, static_cast<int>(p), f.loss.mutable_data_ptr<scalar_t>(),
            grad_x ? f.dx.mutable_data_ptr<scalar_t>() : nullptr, grad_y ? f.dy.mutable_data_ptr<scalar_t>() : nullptr);
      });
    });
  }
  return {f.loss, f.dx, f.dy, f.norm_x, f.norm_y};
}

at::Tensor channel_norm_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.device().is_cpu() && at::isFloatingType(x.scalar_type()),
              "channel_norm_cpu: x must be contiguous CPU float features (B, C, N), got ", x.sizes(), " ",
              x.scalar_type(), " on ", x.device());
  const int64_t batch = x.size(0), channels = x.size(1), n = x.size(2);
  at::Tensor out = at::empty({batch, n}, x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (out.numel() == 0) return out;
  // A task is a block of kBlock positions of one sample: the channels in the outer loop, each a
  // contiguous run of the block's positions, summed into kBlock double accumulators.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, 32768 / (kBlock * std::max<int64_t>(channels, 1)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_norm_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    A* op = out.mutable_data_ptr<A>();
    at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
      double acc[kBlock];
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / blocks;
        const int64_t n0 = (t % blocks) * kBlock;
        const int64_t len = std::min(kBlock, n - n0);
        std::fill(acc, acc + len, 0.0);
        const scalar_t* src = xp + b * channels * n + n0;
        for (int64_t c = 0; c < channels; ++c, src += n) {
          for (int64_t i = 0; i < len; ++i) {
            const double v = static_cast<double>(static_cast<A>(src[i]));
            acc[i] += v * v;
          }
        }
        // A non-finite sum (an inf or NaN feature, or float64 squares beyond the double range) gives a
        // NaN norm: every normalized feature at that position is NaN (normalized_wasserstein_1d's rule).
        A* dst = op + b * n + n0;
        for (int64_t i = 0; i < len; ++i) {
          dst[i] = std::isfinite(acc[i]) ? static_cast<A>(std::sqrt(acc[i])) : std::numeric_limits<A>::quiet_NaN();
        }
      }
    });
  });
  return out;
}

at::Tensor normalized_wasserstein_1d_bwd_cpu(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& f,
                                             const at::Tensor& norm) {
  const NormalizedBackwardPlan b = plan_normalized_backward(grad, g, f, norm);
  const int64_t batch = b.batch, channels = b.channels, n = b.n;
  at::Tensor out = b.out;
  if (out.numel() == 0) return out;
  constexpr int64_t kChunk = 1024;  // positions per task: a reduction over channels per position
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "normalized_wasserstein_1d_bwd_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* gp = b.g.const_data_ptr<scalar_t>();
    const scalar_t* fp = b.f.const_data_ptr<scalar_t>();
    const A* np = b.norm.const_data_ptr<A>();
    const A* wp = b.grad.const_data_ptr<A>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      auto s = scratch<A>(kChunk, "channel sums");
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / chunks;
        const int64_t n0 = (t % chunks) * kChunk;
        const int64_t len = std::min(kChunk, n - n0);
        std::fill(s.begin(), s.begin() + len, A(0));
        for (int64_t c = 0; c < channels; ++c) {
          const A w = wp[b * channels + c];
          const int64_t base = (b * channels + c) * n + n0;
          for (int64_t i = 0; i < len; ++i) s[i] += w * static_cast<A>(gp[base + i]) * static_cast<A>(fp[base + i]);
        }
        const A* r = np + b * n + n0;
        for (int64_t c = 0; c < channels; ++c) {
          const A w = wp[b * channels + c];
          const int64_t base = (b * channels + c) * n + n0;
          for (int64_t i = 0; i < len; ++i) {
            op[base + i] = static_cast<scalar_t>(
                normalize_grad<A>(w * static_cast<A>(gp[base + i]), static_cast<A>(fp[base + i]), s[i], r[i]));
          }
        }
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace pdl_ext
