// CUDA kernels of the fused sort-and-match 1D Wasserstein distance (forward and per-element gradient),
// with the semantics of the CPU kernel (csrc/cpu/wasserstein_1d_cpu.cpp):
//
// - short rows (max(N, M) <= 4096 for 32-bit keys, <= 2048 for 64-bit keys): block_row_kernel, one
//   thread block per row pair. cub::BlockRadixSort sorts both rows in registers and shared memory,
//   then the same kernel matches, reduces and writes the gradient: one read of x and y, one write.
// - long rows: keys_kernel makes the sort keys (and int32 positions), cub::DeviceSegmentedRadixSort
//   sorts every row, and match_rows_kernel (a block per row) matches, reduces and writes the gradient.
// - normalized_wasserstein_1d: the same kernels read each element times 1 / (||f[b, :, i]|| + eps)
//   (a per-position scale), and normalize_bwd_kernel applies the normalization's backward.
//
// Sorting is on KeyTraits keys (-0.0 == +0.0; ties ordered by position, as both CUB sorts are
// stable). A NaN anywhere in a row pair makes its loss and gradients NaN. Accumulation is in
// at::opmath_type (float for half/bfloat16/float, double for double). No atomics: deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_load.cuh>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "../wasserstein_1d.h"
#include "../wasserstein_math.h"

namespace pdl_ext {
namespace gpu {  // not `cuda`: that would shadow CCCL's ::cuda inside this namespace
namespace {

constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();  // rows per launch
constexpr int64_t kMaxSortItems = int64_t(1) << 28;  // items per segmented sort (CUB counts in int)
constexpr int kMatchThreads = 256;
constexpr int kKeysThreads = 256;

// Writes NaN over a row pair's outputs (the documented policy for rows holding NaN).
template <typename scalar_t>
__device__ void fill_nan_row(int64_t n, int64_t m, scalar_t* dx, scalar_t* dy) {
  const scalar_t nan = static_cast<scalar_t>(NAN);
  for (int64_t i = threadIdx.x; dx != nullptr && i < n; i += blockDim.x) dx[i] = nan;
  for (int64_t j = threadIdx.x; dy != nullptr && j < m; j += blockDim.x) dy[j] = nan;
}

// ---------------------------------------------------------------------------------------------
// Short rows: a block sorts one row pair of up to kThreads * kItems atoms per side.
// Positions of y are carried only when its gradient is wanted (kPosY); x always carries them.
// ---------------------------------------------------------------------------------------------
// Rows are row0 + blockIdx.x. With scale_x (scale_y) set, element i of row r of x is read as
// x * scale_x[(r / channels) * n + i]: the fused channel normalization.
template <typename scalar_t, int kThreads, int kItems, bool kPosY>
__global__ void __launch_bounds__(kThreads)
    block_row_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t n, int64_t m,
                     int p, const at::opmath_type<scalar_t>* __restrict__ scale_x,
                     const at::opmath_type<scalar_t>* __restrict__ scale_y, int64_t channels, int64_t row0,
                     scalar_t* __restrict__ loss, scalar_t* __restrict__ dx, scalar_t* __restrict__ dy) {
  using A = at::opmath_type<scalar_t>;
  using KT = KeyTraits<A>;
  using Key = typename KT::Key;
  using Load = cub::BlockLoad<scalar_t, kThreads, kItems, cub::BLOCK_LOAD_TRANSPOSE>;
  using SortX = cub::BlockRadixSort<Key, kThreads, kItems, int32_t>;
  using SortY = cub::BlockRadixSort<Key, kThreads, kItems, std::conditional_t<kPosY, int32_t, cub::NullType>>;
  using Reduce = cub::BlockReduce<A, kThreads>;
  constexpr int kTile = kThreads * kItems;
  // Phases never overlap (a barrier separates them), so they share one buffer.
  __shared__ union {
    typename Load::TempStorage load;
    typename SortX::TempStorage sort_x;
    typename SortY::TempStorage sort_y;
    struct {
      Key x[kTile];
      Key y[kTile];
    } sorted;  // unequal sizes: every thread reads both sorted rows
  } smem;
  __shared__ typename Reduce::TempStorage reduce;

  const int64_t row = row0 + blockIdx.x;
  const int t = threadIdx.x;
  x += row * n;
  y += row * m;
  if (dx != nullptr) dx += row * n;
  if (dy != nullptr) dy += row * m;
  if (scale_x != nullptr) scale_x += (row / channels) * n;
  if (scale_y != nullptr) scale_y += (row / channels) * m;

  // Blocked arrangement (thread t holds positions t * kItems + k): the stable sort orders ties by
  // position. Padding gets the largest key and a position >= n, so it sorts after every real atom.
  Key kx[kItems], ky[kItems];
  int32_t px[kItems], py[kItems];
  bool has_nan = false;
  {
    scalar_t v[kItems];
    Load(smem.load).Load(x, v, static_cast<int>(n), scalar_t(0));
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int i = t * kItems + k;
      const A a = scale_x != nullptr && i < n ? static_cast<A>(v[k]) * scale_x[i] : static_cast<A>(v[k]);
      has_nan |= i < n && a != a;
      kx[k] = i < n ? KT::to_key(a) : ~Key(0);
      px[k] = i;
    }
    __syncthreads();
    Load(smem.load).Load(y, v, static_cast<int>(m), scalar_t(0));
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int j = t * kItems + k;
      const A a = scale_y != nullptr && j < m ? static_cast<A>(v[k]) * scale_y[j] : static_cast<A>(v[k]);
      has_nan |= j < m && a != a;
      ky[k] = j < m ? KT::to_key(a) : ~Key(0);
      py[k] = j;
    }
  }
  if (__syncthreads_or(has_nan)) {  // uniform over the block: every thread leaves here
    fill_nan_row(n, m, dx, dy);
    if (t == 0) loss[row] = static_cast<scalar_t>(NAN);
    return;
  }

  // Striped result: thread t holds ranks k * kThreads + t, the same ranks for x and y.
  SortX(smem.sort_x).SortBlockedToStriped(kx, px);
  __syncthreads();
  if constexpr (kPosY) {
    SortY(smem.sort_y).SortBlockedToStriped(ky, py);
  } else {
    SortY(smem.sort_y).SortBlockedToStriped(ky);
  }
  __syncthreads();

  A part = A(0);
  if (n == m) {
    const A inv = static_cast<A>(1.0 / static_cast<double>(n));
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int r = k * kThreads + t;
      if (r < n) {
        const A d = KT::from_key(kx[k]) - KT::from_key(ky[k]);
        part += pair_cost(d, p);
        const A g = pair_grad(d, p) * inv;
        if (dx != nullptr) dx[px[k]] = static_cast<scalar_t>(g);
        if constexpr (kPosY) {
          if (dy != nullptr) dy[py[k]] = static_cast<scalar_t>(-g);
        }
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int r = k * kThreads + t;
      if (r < n) smem.sorted.x[r] = kx[k];
      if (r < m) smem.sorted.y[r] = ky[k];
    }
    __syncthreads();
    const double total = static_cast<double>(n) * static_cast<double>(m);
    const A inv = static_cast<A>(1.0 / total);
    // The loss is summed over the atoms of the longer side: each of them has at most 2 segments.
    const bool cost_on_x = n >= m;
    auto sy = [&](int64_t j) { return KT::from_key(smem.sorted.y[j]); };
    auto sx = [&](int64_t i) { return KT::from_key(smem.sorted.x[i]); };
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int r = k * kThreads + t;
      if (r < n && (cost_on_x || dx != nullptr)) {
        A cost = A(0);
        const A g = merge_atom<true>(r, KT::from_key(kx[k]), n, m, p, sy, cost);
        if (cost_on_x) part += cost;
        if (dx != nullptr) dx[px[k]] = static_cast<scalar_t>(g * inv);
      }
      bool want_dy = false;
      if constexpr (kPosY) want_dy = dy != nullptr;
      if (r < m && (!cost_on_x || want_dy)) {
        A cost = A(0);
        const A g = merge_atom<false>(r, KT::from_key(ky[k]), m, n, p, sx, cost);
        if (!cost_on_x) part += cost;
        if constexpr (kPosY) {
          if (dy != nullptr) dy[py[k]] = static_cast<scalar_t>(g * inv);
        }
      }
    }
  }
  const A sum = Reduce(reduce).Sum(part);
  if (t == 0) {
    const A denom = n == m ? static_cast<A>(n) : static_cast<A>(static_cast<double>(n) * static_cast<double>(m));
    loss[row] = static_cast<scalar_t>(sum / denom);
  }
}

// ---------------------------------------------------------------------------------------------
// Long rows: keys (and int32 positions within the row) of rows [row0, row0 + rows) for the
// segmented sort, at keys[(r - row0) * len + i]; scale as in block_row_kernel.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void keys_kernel(const scalar_t* __restrict__ src, int64_t rows, int64_t len,
                            const at::opmath_type<scalar_t>* __restrict__ scale, int64_t channels, int64_t row0,
                            typename KeyTraits<at::opmath_type<scalar_t>>::Key* __restrict__ keys,
                            int32_t* __restrict__ pos) {
  using A = at::opmath_type<scalar_t>;
  // A chunk holds at most max(kMaxSortItems, len) < 2^31 items: 32-bit index math (64-bit division
  // is slow on the GPU), with no overflow as the grid stride is below 2^24.
  const uint32_t count = static_cast<uint32_t>(rows * len);
  const uint32_t len32 = static_cast<uint32_t>(len);
  const uint32_t stride = gridDim.x * blockDim.x;
  src += row0 * len;
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < count; e += stride) {
    const uint32_t i = e % len32;
    A a = static_cast<A>(src[e]);
    if (scale != nullptr) a *= scale[((row0 + e / len32) / channels) * len + i];
    keys[e] = KeyTraits<A>::to_key(a);
    if (pos != nullptr) pos[e] = static_cast<int32_t>(i);
  }
}

// Long rows: a block matches one sorted row pair (block-stride loops over its atoms). The sorted
// rows are those of the chunk (blockIdx.x); the outputs are those of row row0 + blockIdx.x.
template <typename scalar_t>
__global__ void __launch_bounds__(kMatchThreads)
    match_rows_kernel(const typename KeyTraits<at::opmath_type<scalar_t>>::Key* __restrict__ kx,
                      const int32_t* __restrict__ px,
                      const typename KeyTraits<at::opmath_type<scalar_t>>::Key* __restrict__ ky,
                      const int32_t* __restrict__ py, int64_t n, int64_t m, int p, int64_t row0,
                      scalar_t* __restrict__ loss, scalar_t* __restrict__ dx, scalar_t* __restrict__ dy) {
  using A = at::opmath_type<scalar_t>;
  using KT = KeyTraits<A>;
  using Reduce = cub::BlockReduce<A, kMatchThreads>;
  __shared__ typename Reduce::TempStorage reduce;

  const int64_t local = blockIdx.x;
  const int64_t row = row0 + local;
  kx += local * n;
  ky += local * m;
  if (px != nullptr) px += local * n;
  if (py != nullptr) py += local * m;
  if (dx != nullptr) dx += row * n;
  if (dy != nullptr) dy += row * m;

  // NaN keys sort below -inf or above +inf: the ends of the sorted rows tell (same for every thread).
  const A ends[4] = {KT::from_key(kx[0]), KT::from_key(kx[n - 1]), KT::from_key(ky[0]),
                     KT::from_key(ky[m - 1])};
  if (ends[0] != ends[0] || ends[1] != ends[1] || ends[2] != ends[2] || ends[3] != ends[3]) {
    fill_nan_row(n, m, dx, dy);
    if (threadIdx.x == 0) loss[row] = static_cast<scalar_t>(NAN);
    return;
  }

  A part = A(0);
  if (n == m) {
    const A inv = static_cast<A>(1.0 / static_cast<double>(n));
    for (int64_t i = threadIdx.x; i < n; i += kMatchThreads) {
      const A d = KT::from_key(kx[i]) - KT::from_key(ky[i]);
      part += pair_cost(d, p);
      const A g = pair_grad(d, p) * inv;
      if (dx != nullptr) dx[px[i]] = static_cast<scalar_t>(g);
      if (dy != nullptr) dy[py[i]] = static_cast<scalar_t>(-g);
    }
  } else {
    const A inv = static_cast<A>(1.0 / (static_cast<double>(n) * static_cast<double>(m)));
    const bool cost_on_x = n >= m;
    auto sy = [&](int64_t j) { return KT::from_key(ky[j]); };
    auto sx = [&](int64_t i) { return KT::from_key(kx[i]); };
    if (cost_on_x || dx != nullptr) {
      for (int64_t i = threadIdx.x; i < n; i += kMatchThreads) {
        A cost = A(0);
        const A g = merge_atom<true>(i, KT::from_key(kx[i]), n, m, p, sy, cost);
        if (cost_on_x) part += cost;
        if (dx != nullptr) dx[px[i]] = static_cast<scalar_t>(g * inv);
      }
    }
    if (!cost_on_x || dy != nullptr) {
      for (int64_t j = threadIdx.x; j < m; j += kMatchThreads) {
        A cost = A(0);
        const A g = merge_atom<false>(j, KT::from_key(ky[j]), m, n, p, sx, cost);
        if (!cost_on_x) part += cost;
        if (dy != nullptr) dy[py[j]] = static_cast<scalar_t>(g * inv);
      }
    }
  }
  const A sum = Reduce(reduce).Sum(part);
  if (threadIdx.x == 0) {
    const A denom = n == m ? static_cast<A>(n) : static_cast<A>(static_cast<double>(n) * static_cast<double>(m));
    loss[row] = static_cast<scalar_t>(sum / denom);
  }
}

// normalized_wasserstein_1d backward at one position per thread (b, i), as the CPU kernel:
// s = sum_c w[b, c] g[b, c, i] f[b, c, i], then out[b, c, i] = normalize_grad(w g, f, s, r[b, i]).
template <typename scalar_t>
__global__ void normalize_bwd_kernel(const at::opmath_type<scalar_t>* __restrict__ w,
                                     const scalar_t* __restrict__ g, const scalar_t* __restrict__ f,
                                     const at::opmath_type<scalar_t>* __restrict__ norm, int64_t batch,
                                     int64_t channels, int64_t n, scalar_t* __restrict__ out) {
  using A = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < batch * n; t += stride) {
    const int64_t b = t / n;
    const int64_t base = b * channels * n + t % n;  // element (b, 0, i); channel c at base + c * n
    const A* wb = w + b * channels;
    A s = A(0);
    for (int64_t c = 0; c < channels; ++c) {
      s += wb[c] * static_cast<A>(g[base + c * n]) * static_cast<A>(f[base + c * n]);
    }
    const A r = norm[t];
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t e = base + c * n;
      out[e] = static_cast<scalar_t>(normalize_grad<A>(wb[c] * static_cast<A>(g[e]), static_cast<A>(f[e]), s, r));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

// The rows of one forward: x (rows, n), y (rows, m), optional per-position scales (B, n) / (B, m)
// with rows = B * channels, and the outputs (dx, dy null when not wanted).
template <typename scalar_t>
struct Rows {
  using A = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* y;
  const A* scale_x;
  const A* scale_y;
  int64_t channels;
  int64_t rows, n, m;
  int p;
  scalar_t* loss;
  scalar_t* dx;
  scalar_t* dy;
};

unsigned grid_for(int64_t items, int threads) {
  return static_cast<unsigned>(std::clamp<int64_t>((items + threads - 1) / threads, 1, int64_t(1) << 16));
}

template <typename scalar_t, int kThreads, int kItems>
void launch_block_rows(const Rows<scalar_t>& a, cudaStream_t stream) {
  for (int64_t r0 = 0; r0 < a.rows; r0 += kMaxGridX) {
    const unsigned grid = static_cast<unsigned>(std::min(a.rows - r0, kMaxGridX));
    if (a.dy != nullptr) {
      block_row_kernel<scalar_t, kThreads, kItems, true><<<grid, kThreads, 0, stream>>>(
          a.x, a.y, a.n, a.m, a.p, a.scale_x, a.scale_y, a.channels, r0, a.loss, a.dx, a.dy);
    } else {
      block_row_kernel<scalar_t, kThreads, kItems, false><<<grid, kThreads, 0, stream>>>(
          a.x, a.y, a.n, a.m, a.p, a.scale_x, a.scale_y, a.channels, r0, a.loss, a.dx, nullptr);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T>
T* scratch(int64_t count, const at::TensorOptions& bytes, at::Tensor& holder) {
  holder = at::empty({std::max<int64_t>(count, 1) * static_cast<int64_t>(sizeof(T))}, bytes);
  return reinterpret_cast<T*>(holder.data_ptr());
}

// Sorts `segments` rows of `len` keys (with their positions when pos != nullptr) on the stream;
// keys and pos are left pointing at the buffers that hold the sorted result.
template <typename Key>
void sort_rows(Key*& keys, Key* keys_alt, int32_t*& pos, int32_t* pos_alt, int64_t segments, int64_t len,
               const int32_t* offsets, const at::TensorOptions& bytes, cudaStream_t stream) {
  const int64_t items = segments * len;
  TORCH_CHECK(items <= std::numeric_limits<int>::max() && segments <= std::numeric_limits<int>::max(),
              "wasserstein_1d: internal error: a segmented sort of ", items, " items in ", segments,
              " rows exceeds CUB's int limits");
  const int num_items = static_cast<int>(items);
  const int num_segments = static_cast<int>(segments);
  constexpr int kEndBit = static_cast<int>(sizeof(Key) * 8);
  cub::DoubleBuffer<Key> kb(keys, keys_alt);
  size_t temp_bytes = 0;
  at::Tensor temp;  // back to the caching allocator on return; stream order keeps it valid for the sort
  if (pos != nullptr) {
    cub::DoubleBuffer<int32_t> vb(pos, pos_alt);
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(nullptr, temp_bytes, kb, vb, num_items, num_segments,
                                                            offsets, offsets + 1, 0, kEndBit, stream));
    void* tp = scratch<uint8_t>(static_cast<int64_t>(temp_bytes), bytes, temp);
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(tp, temp_bytes, kb, vb, num_items, num_segments,
                                                            offsets, offsets + 1, 0, kEndBit, stream));
    pos = vb.Current();
  } else {
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(nullptr, temp_bytes, kb, num_items, num_segments,
                                                           offsets, offsets + 1, 0, kEndBit, stream));
    void* tp = scratch<uint8_t>(static_cast<int64_t>(temp_bytes), bytes, temp);
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(tp, temp_bytes, kb, num_items, num_segments,
                                                           offsets, offsets + 1, 0, kEndBit, stream));
  }
  keys = kb.Current();
}

// Long rows: per chunk of rows, keys -> segmented sort -> fused match; scratch is O(chunk * (N + M)).
template <typename scalar_t>
void segmented_rows(const Rows<scalar_t>& a, const at::TensorOptions& options, cudaStream_t stream) {
  using Key = typename KeyTraits<at::opmath_type<scalar_t>>::Key;
  const at::TensorOptions bytes = options.dtype(at::kByte);
  const int64_t n = a.n, m = a.m;
  // Rows per chunk: chunk * max(n, m) <= kMaxSortItems, or one row (n, m < 2^31 by the input check).
  const int64_t chunk = std::max<int64_t>(1, std::min(kMaxSortItems / std::max(n, m), kMaxGridX));
  const int64_t first = std::min(chunk, a.rows);
  // Row offsets r * len, shared by every chunk (the last one uses a prefix).
  const at::Tensor steps = at::arange(first + 1, options.dtype(at::kLong));
  const at::Tensor off_x = (steps * n).to(at::kInt);
  const at::Tensor off_y = (steps * m).to(at::kInt);
  at::Tensor hold[8];
  Key* kx0 = scratch<Key>(first * n, bytes, hold[0]);
  Key* kx1 = scratch<Key>(first * n, bytes, hold[1]);
  Key* ky0 = scratch<Key>(first * m, bytes, hold[2]);
  Key* ky1 = scratch<Key>(first * m, bytes, hold[3]);
  int32_t* px0 = a.dx != nullptr ? scratch<int32_t>(first * n, bytes, hold[4]) : nullptr;
  int32_t* px1 = a.dx != nullptr ? scratch<int32_t>(first * n, bytes, hold[5]) : nullptr;
  int32_t* py0 = a.dy != nullptr ? scratch<int32_t>(first * m, bytes, hold[6]) : nullptr;
  int32_t* py1 = a.dy != nullptr ? scratch<int32_t>(first * m, bytes, hold[7]) : nullptr;
  for (int64_t r0 = 0; r0 < a.rows; r0 += chunk) {
    const int64_t cr = std::min(chunk, a.rows - r0);
    keys_kernel<scalar_t><<<grid_for(cr * n, kKeysThreads), kKeysThreads, 0, stream>>>(
        a.x, cr, n, a.scale_x, a.channels, r0, kx0, px0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    keys_kernel<scalar_t><<<grid_for(cr * m, kKeysThreads), kKeysThreads, 0, stream>>>(
        a.y, cr, m, a.scale_y, a.channels, r0, ky0, py0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Key* kx = kx0;
    Key* ky = ky0;
    int32_t* px = px0;
    int32_t* py = py0;
    sort_rows(kx, kx1, px, px1, cr, n, off_x.const_data_ptr<int32_t>(), bytes, stream);
    sort_rows(ky, ky1, py, py1, cr, m, off_y.const_data_ptr<int32_t>(), bytes, stream);
    match_rows_kernel<scalar_t><<<static_cast<unsigned>(cr), kMatchThreads, 0, stream>>>(
        kx, px, ky, py, n, m, a.p, r0, a.loss, a.dx, a.dy);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
void forward_rows(const Rows<scalar_t>& a, const at::TensorOptions& options, cudaStream_t stream) {
  using Key = typename KeyTraits<at::opmath_type<scalar_t>>::Key;
  const int64_t len = std::max(a.n, a.m);
  if (len <= 128) return launch_block_rows<scalar_t, 64, 2>(a, stream);
  if (len <= 512) return launch_block_rows<scalar_t, 128, 4>(a, stream);
  if (len <= 2048) return launch_block_rows<scalar_t, 256, 8>(a, stream);
  // 64-bit keys of a 4096 tile would need 64 KiB of sorted keys: above the static shared limit.
  if constexpr (sizeof(Key) == 4) {
    if (len <= 4096) return launch_block_rows<scalar_t, 512, 8>(a, stream);
  }
  segmented_rows(a, options, stream);
}

// Runs the forward on x (rows, n), y (rows, m) (contiguous; scales as in Rows) into the outputs.
void run_forward(const at::Tensor& xc, const at::Tensor& yc, int64_t rows, int64_t n, int64_t m, int64_t p,
                 const at::Tensor* scale_x, const at::Tensor* scale_y, int64_t channels, at::Tensor& loss,
                 at::Tensor& dx, at::Tensor& dy, bool grad_x, bool grad_y) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "wasserstein_1d_fwd_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    const Rows<scalar_t> a{xc.const_data_ptr<scalar_t>(),
                           yc.const_data_ptr<scalar_t>(),
                           scale_x != nullptr ? scale_x->const_data_ptr<A>() : nullptr,
                           scale_y != nullptr ? scale_y->const_data_ptr<A>() : nullptr,
                           channels,
                           rows,
                           n,
                           m,
                           static_cast<int>(p),
                           loss.mutable_data_ptr<scalar_t>(),
                           grad_x ? dx.mutable_data_ptr<scalar_t>() : nullptr,
                           grad_y ? dy.mutable_data_ptr<scalar_t>() : nullptr};
    forward_rows<scalar_t>(a, xc.options(), stream);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> wasserstein_1d_fwd_cuda(const at::Tensor& x, const at::Tensor& y,
                                                                       int64_t p, bool grad_x, bool grad_y) {
  TORCH_CHECK(x.is_cuda(), "wasserstein_1d: x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard device_guard(x.device());
  ForwardPlan f = plan_forward(x, y, p, grad_x, grad_y, /*normalized=*/false);
  if (f.rows > 0) {
    run_forward(f.x, f.y, f.rows, f.n, f.m, p, nullptr, nullptr, 1, f.loss, f.dx, f.dy, grad_x, grad_y);
  }
  return {f.loss, f.dx, f.dy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> normalized_wasserstein_1d_fwd_cuda(
    const at::Tensor& x, const at::Tensor& y, int64_t p, bool grad_x, bool grad_y) {
  TORCH_CHECK(x.is_cuda(), "normalized_wasserstein_1d: x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard device_guard(x.device());
  ForwardPlan f = plan_forward(x, y, p, grad_x, grad_y, /*normalized=*/true);
  if (f.rows > 0) {
    run_forward(f.x, f.y, f.rows, f.n, f.m, p, &f.inv_x, &f.inv_y, f.channels, f.loss, f.dx, f.dy, grad_x, grad_y);
  }
  return {f.loss, f.dx, f.dy, f.norm_x, f.norm_y};
}

at::Tensor normalized_wasserstein_1d_bwd_cuda(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& f,
                                              const at::Tensor& norm) {
  TORCH_CHECK(g.is_cuda(), "normalized_wasserstein_1d_bwd: g must be a CUDA tensor, got ", g.device());
  const c10::cuda::CUDAGuard device_guard(g.device());
  const NormalizedBackwardPlan b = plan_normalized_backward(grad, g, f, norm);
  const int64_t batch = b.batch, channels = b.channels, n = b.n;
  at::Tensor out = b.out;
  if (out.numel() == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "normalized_wasserstein_1d_bwd_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    normalize_bwd_kernel<scalar_t><<<grid_for(batch * n, kKeysThreads), kKeysThreads, 0, stream>>>(
        b.grad.const_data_ptr<A>(), b.g.const_data_ptr<scalar_t>(), b.f.const_data_ptr<scalar_t>(),
        b.norm.const_data_ptr<A>(), batch, channels, n, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdl_ext, CUDA, m) {
  m.impl("wasserstein_1d_fwd", &wasserstein_1d_fwd_cuda);
  m.impl("normalized_wasserstein_1d_fwd", &normalized_wasserstein_1d_fwd_cuda);
  m.impl("normalized_wasserstein_1d_bwd", &normalized_wasserstein_1d_bwd_cuda);
}

}  // namespace gpu
}  // namespace pdl_ext
