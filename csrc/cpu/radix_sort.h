// LSD radix sort of short arrays on one CPU thread, for the per-row sorts of the CPU kernels.
//
// Items are sorted by an unsigned key extracted from each item; the sort is stable, so items that
// carry their position (packed in the low bits or in a field) come out in (key, position) order,
// the order torch.sort(stable=True) gives. Passes in which every key shares the digit are skipped
// (common for the high bytes of float keys from one feature map).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

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

// Sorts a[0, n) by key(item) in kKeyBits bits, kRadix bits per pass, using tmp[0, n) as scratch.
// Returns the buffer that holds the sorted result (a or tmp). `hist` must hold
// (kKeyBits / kRadix rounded up) << kRadix counters.
template <int kKeyBits, int kRadix, typename Item, typename GetKey>
inline Item* radix_sort(Item* a, Item* tmp, int64_t n, GetKey key, uint32_t* hist) {
  constexpr int kPasses = (kKeyBits + kRadix - 1) / kRadix;
  constexpr uint32_t kBuckets = 1u << kRadix;
  constexpr uint64_t kMask = kBuckets - 1;
  std::memset(hist, 0, sizeof(uint32_t) * kPasses * kBuckets);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t k = static_cast<uint64_t>(key(a[i]));
#pragma GCC unroll 8
    for (int pass = 0; pass < kPasses; ++pass) {
      ++hist[pass * kBuckets + ((k >> (pass * kRadix)) & kMask)];
    }
  }
  Item* src = a;
  Item* dst = tmp;
  for (int pass = 0; pass < kPasses; ++pass) {
    uint32_t* h = hist + pass * kBuckets;
    const uint64_t first_digit = (static_cast<uint64_t>(key(src[0])) >> (pass * kRadix)) & kMask;
    if (h[first_digit] == static_cast<uint32_t>(n)) continue;  // every key has this digit
    uint32_t sum = 0;
    for (uint32_t b = 0; b < kBuckets; ++b) {
      const uint32_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    const int shift = pass * kRadix;
    for (int64_t i = 0; i < n; ++i) {
      const Item v = src[i];
      dst[h[(static_cast<uint64_t>(key(v)) >> shift) & kMask]++] = v;
    }
    std::swap(src, dst);
  }
  return src;
}

}  // namespace cpu
}  // namespace pdl_ext
