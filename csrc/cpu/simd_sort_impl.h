// The vectorized merge sort of simd_sort.h, written once for any vector traits V:
//
//   V::T (uint32_t, uint64_t), V::Vec (the vector type), V::L (lanes), V::kMax (the padding, sorting
//   last), load/store, vmin/vmax, perm_xor<X> (lane i <- lane i ^ X), minmax_bit<Bit>(v, p) (min(v, p)
//   in the lanes without Bit, max in those with it), le(a, b) (the sort's order on scalars), and
//   enter/leave(a, n) (into and out of the order the vector compares use, if it differs).
//
// Blocks of up to 8 vectors are sorted in registers (a bitonic network inside each vector, then
// bitonic merges of vectors), and sorted runs are merged pairwise through registers: the merge keeps
// the larger half of the last merged vectors and loads the next vectors from the run whose head is
// smaller (Inoue et al., "AA-sort", 2007; Chhugani et al., "Efficient implementation of sorting on
// multi-core SIMD CPU architecture", 2008).
//
// Included only by the per-instruction-set files (simd_sort_avx512.cpp, simd_sort_avx2.cpp), after
// their target pragma and inside an anonymous namespace: every instantiation stays private to its
// file, so the linker can never hand code for one instruction set to a caller of another.
// No #include here (nothing compiled for a wider instruction set may be shared).
#pragma once

template <int L, int Bit>
constexpr unsigned lanes_with_bit() {
  unsigned m = 0;
  for (int i = 0; i < L; ++i) m |= ((i & Bit) != 0 ? 1u : 0u) << i;
  return m;
}

// Compare-exchange of lanes i and i ^ J inside a vector (the lane with bit J set keeps the max).
template <class V, int J>
inline typename V::Vec cx_xor(typename V::Vec v) {
  return V::template minmax_bit<J>(v, V::template perm_xor<J>(v));
}

// Half-cleaners at lane distances J, J/2, ..., 1: sorts every block of 2J lanes that is bitonic.
template <class V, int J>
inline typename V::Vec clean(typename V::Vec v) {
  if constexpr (J >= 1) {
    return clean<V, J / 2>(cx_xor<V, J>(v));
  } else {
    return v;
  }
}

// Sorts the lanes of one vector: blocks of K lanes from sorted halves, K = 2, 4, ..., L (each step
// compares lane i with its mirror in the block, then cleans the halves).
template <class V, int K = 2>
inline typename V::Vec sort_lanes(typename V::Vec v) {
  if constexpr (K <= V::L) {
    v = V::template minmax_bit<K / 2>(v, V::template perm_xor<K - 1>(v));
    return sort_lanes<V, 2 * K>(clean<V, K / 4>(v));
  } else {
    return v;
  }
}

// r[0, R/2) and r[R/2, R) are sorted runs of vectors; merges them into one sorted run r[0, R).
template <class V, int R>
inline void merge_vectors(typename V::Vec* r) {
  // The first run followed by the second reversed is bitonic: its half-cleaner compares vector i of
  // the first run with the reversed vector R - 1 - i of the second.
  typename V::Vec hi[R / 2];
  for (int i = 0; i < R / 2; ++i) {
    const typename V::Vec b = V::template perm_xor<V::L - 1>(r[R - 1 - i]);
    hi[i] = V::vmax(r[i], b);
    r[i] = V::vmin(r[i], b);
  }
  for (int i = 0; i < R / 2; ++i) r[R / 2 + i] = hi[i];
  for (int s = R / 4; s >= 1; s /= 2) {  // half-cleaners across vectors
    for (int i = 0; i < R; ++i) {
      if ((i & s) == 0) {
        const typename V::Vec lo = V::vmin(r[i], r[i + s]);
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
  typename V::Vec r[R];
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
  typename V::Vec r[2 * W];

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
    const bool take_a = ib >= nb || (ia < na && V::le(ha, hb));
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
  const int64_t padded = (n + block - 1) / block * block;
  T* src[2];
  T* dst[2];
  for (int k = 0; k < rows; ++k) {
    V::enter(a[k], n);
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
  for (int k = 0; k < rows; ++k) {
    V::leave(src[k], n);
    out[k] = src[k];
  }
}

// The sort entries of a kernel table (simd_sort.h) for traits V64 (uint64 items) and V32 (uint32 keys).
template <class V64, class V32>
struct SortEntries {
  static uint64_t* sort_u64(uint64_t* a, uint64_t* tmp, int64_t n) {
    uint64_t* out;
    sort_rows<V64, 2>(&a, &tmp, 1, n, &out);
    return out;
  }
  static uint32_t* sort_u32(uint32_t* a, uint32_t* tmp, int64_t n) {
    uint32_t* out;
    sort_rows<V32, 2>(&a, &tmp, 1, n, &out);
    return out;
  }
  static void sort2_u64(uint64_t* const a[2], uint64_t* const tmp[2], int64_t n, uint64_t* out[2]) {
    sort_rows<V64, 2>(a, tmp, 2, n, out);
  }
  static void sort2_u32(uint32_t* const a[2], uint32_t* const tmp[2], int64_t n, uint32_t* out[2]) {
    sort_rows<V32, 2>(a, tmp, 2, n, out);
  }
};
