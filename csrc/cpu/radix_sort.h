// LSD radix sort on one CPU thread, for the per-row sorts of the CPU kernels.
//
// Items are unsigned words (or small structs) sorted by a bit field; the sort is stable, so items
// that carry their position in lower bits come out in (key, position) order, the order
// torch.sort(stable=True) gives. Passes in which every item shares the digit are skipped (common
// for the high bytes of float keys from one feature map).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace pdl_ext {
namespace cpu {

// Insertion sort for very short rows; `less` must be a strict total order (ties broken by position).
template <typename Item, typename Less>
inline void insertion_sort(Item* a, int64_t n, Less less) {
  for (int64_t i = 1; i < n; ++i) {
    Item v = a[i];
    int64_t j = i - 1;
    while (j >= 0 && less(v, a[j])) {
      a[j + 1] = a[j];
      --j;
    }
    a[j + 1] = v;
  }
}

// Histograms of `passes` digits of kRadix bits, starting at bit `lo` of key(item). Callers fill
// them while they load the items (one read less), then call radix_passes.
template <int kRadix>
struct RadixHistogram {
  static constexpr uint32_t kBuckets = 1u << kRadix;
  static constexpr uint64_t kMask = kBuckets - 1;
  uint32_t* counts;  // passes * kBuckets counters
  int lo;
  int passes;

  void clear() const { std::memset(counts, 0, sizeof(uint32_t) * passes * kBuckets); }
  inline void add(uint64_t k) const {
    k >>= lo;
    for (int pass = 0; pass < passes; ++pass) {
      ++counts[pass * kBuckets + (k & kMask)];
      k >>= kRadix;
    }
  }
};

// Scatters a[0, n) by the histogrammed digits, using tmp[0, n) as scratch; returns the buffer that
// holds the sorted items (a or tmp).
template <int kRadix, typename Item, typename GetKey>
inline Item* radix_passes(Item* a, Item* tmp, int64_t n, GetKey key, const RadixHistogram<kRadix>& h) {
  constexpr uint32_t kBuckets = RadixHistogram<kRadix>::kBuckets;
  constexpr uint64_t kMask = RadixHistogram<kRadix>::kMask;
  Item* src = a;
  Item* dst = tmp;
  if (n <= 1) return src;
  for (int pass = 0; pass < h.passes; ++pass) {
    uint32_t* c = h.counts + pass * kBuckets;
    const int shift = h.lo + pass * kRadix;
    if (c[(static_cast<uint64_t>(key(src[0])) >> shift) & kMask] == static_cast<uint32_t>(n)) continue;
    uint32_t sum = 0;
    for (uint32_t b = 0; b < kBuckets; ++b) {
      const uint32_t v = c[b];
      c[b] = sum;
      sum += v;
    }
    for (int64_t i = 0; i < n; ++i) {
      const Item v = src[i];
      dst[c[(static_cast<uint64_t>(key(v)) >> shift) & kMask]++] = v;
    }
    std::swap(src, dst);
  }
  return src;
}

// Sorts a[0, n) by all kKeyBits bits of key(item) (histogram computed here).
template <int kKeyBits, int kRadix, typename Item, typename GetKey>
inline Item* radix_sort(Item* a, Item* tmp, int64_t n, GetKey key, uint32_t* counts) {
  const RadixHistogram<kRadix> h{counts, 0, (kKeyBits + kRadix - 1) / kRadix};
  h.clear();
  for (int64_t i = 0; i < n; ++i) h.add(static_cast<uint64_t>(key(a[i])));
  return radix_passes<kRadix>(a, tmp, n, key, h);
}

}  // namespace cpu
}  // namespace pdl_ext
