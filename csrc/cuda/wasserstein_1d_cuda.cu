// CUDA kernels of the fused sort-and-match 1D Wasserstein distance (forward and per-element gradient),
// with the semantics of the CPU kernel (csrc/cpu/wasserstein_1d_cpu.cpp):
//
// - short rows (max(N, M) <= 4096 for 32-bit keys, <= 2048 for 64-bit keys): block_row_kernel, one
//   thread block per row pair. cub::BlockRadixSort sorts both rows in registers and shared memory,
//   then the same kernel matches, reduces and writes the gradient: one read of x and y, one write.
// - long rows: keys_kernel makes the sort keys (and int32 positions), cub::DeviceSegmentedRadixSort
//   sorts every row, and match_rows_kernel (a block per row) matches, reduces and writes the gradient.
//   Both kernels match through RowMatch (device_math.h).
// - normalized_wasserstein_1d: the same kernels read each element times 1 / (||f[b, :, i]|| + eps)
//   (a per-position scale); the normalization's backward is in channel_norm.cu.
//
// Sorting is on KeyTraits keys (-0.0 == +0.0; ties ordered by position, as both CUB sorts are
// stable). A NaN anywhere in a row pair makes its loss and gradients NaN. Per-pair arithmetic is in
// at::opmath_type (float for half/bfloat16/float, double for double); the loss and, for unequal
// sizes, each atom's gradient are summed in double. Products and sums of the gradients are rounded
// one by one (device_math.h): the CPU's bits. No atomics: deterministic.
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
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <type_traits>

#include "../wasserstein_1d.h"
#include "../wasserstein_math.h"
#include "channel_norm.h"
#include "device_math.h"

namespace pdl_ext {
namespace gpu {  // not `cuda`: that would shadow CCCL's ::cuda inside this namespace
namespace {

constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();  // rows per launch
constexpr int64_t kMaxSortItems = int64_t(1) << 28;  // items per segmented sort (CUB counts in int); max_sort_items()
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
// Positions of x (y) are carried only when its gradient is wanted (kPosX, kPosY).
// ---------------------------------------------------------------------------------------------
// Rows are row0 + blockIdx.x. With scale_x (scale_y) set, element i of row r of x is read as
// x * scale_x[(r / channels) * n + i]: the fused channel normalization. The radix sort looks at
// key bits [begin_bit, end of key) only (sort_begin_bit).
template <typename scalar_t, int kThreads, int kItems, bool kPosX, bool kPosY>
__global__ void __launch_bounds__(kThreads)
    block_row_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t n, int64_t m,
                     int p, const at::opmath_type<scalar_t>* __restrict__ scale_x,
                     const at::opmath_type<scalar_t>* __restrict__ scale_y, int64_t channels, int64_t row0,
                     int begin_bit, scalar_t* __restrict__ loss, scalar_t* __restrict__ dx,
                     scalar_t* __restrict__ dy) {
  using A = at::opmath_type<scalar_t>;
  using KT = KeyTraits<A>;
  using Key = typename KT::Key;
  using Load = cub::BlockLoad<scalar_t, kThreads, kItems, cub::BLOCK_LOAD_TRANSPOSE>;
  using SortX = cub::BlockRadixSort<Key, kThreads, kItems, std::conditional_t<kPosX, int32_t, cub::NullType>>;
  using SortY = cub::BlockRadixSort<Key, kThreads, kItems, std::conditional_t<kPosY, int32_t, cub::NullType>>;
  using Reduce = cub::BlockReduce<double, kThreads>;
  constexpr int kTile = kThreads * kItems;
  constexpr int kEndBit = static_cast<int>(sizeof(Key) * 8);
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
  if (scale_x != nullptr) scale_x += (row / channels) * n;
  if (scale_y != nullptr) scale_y += (row / channels) * m;
  // Without positions there is no gradient to write: the compiler drops those stores.
  scalar_t* const dxr = kPosX ? dx + row * n : nullptr;
  scalar_t* const dyr = kPosY ? dy + row * m : nullptr;

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
      const A a = scale_x != nullptr && i < n ? rn::mul(static_cast<A>(v[k]), scale_x[i]) : static_cast<A>(v[k]);
      has_nan |= i < n && a != a;
      kx[k] = i < n ? KT::to_key(a) : ~Key(0);
      px[k] = i;
    }
    __syncthreads();
    Load(smem.load).Load(y, v, static_cast<int>(m), scalar_t(0));
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int j = t * kItems + k;
      const A a = scale_y != nullptr && j < m ? rn::mul(static_cast<A>(v[k]), scale_y[j]) : static_cast<A>(v[k]);
      has_nan |= j < m && a != a;
      ky[k] = j < m ? KT::to_key(a) : ~Key(0);
      py[k] = j;
    }
  }
  if (__syncthreads_or(has_nan)) {  // uniform over the block: every thread leaves here
    fill_nan_row(n, m, dxr, dyr);
    if (t == 0) loss[row] = static_cast<scalar_t>(NAN);
    return;
  }

  // Striped result: thread t holds ranks k * kThreads + t, the same ranks for x and y.
  if constexpr (kPosX) {
    SortX(smem.sort_x).SortBlockedToStriped(kx, px, begin_bit, kEndBit);
  } else {
    SortX(smem.sort_x).SortBlockedToStriped(kx, begin_bit, kEndBit);
  }
  __syncthreads();
  if constexpr (kPosY) {
    SortY(smem.sort_y).SortBlockedToStriped(ky, py, begin_bit, kEndBit);
  } else {
    SortY(smem.sort_y).SortBlockedToStriped(ky, begin_bit, kEndBit);
  }
  __syncthreads();

  if (n != m) {  // merge_atom_f64 reads the other side's sorted row at any rank
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int r = k * kThreads + t;
      if (r < n) smem.sorted.x[r] = kx[k];
      if (r < m) smem.sorted.y[r] = ky[k];
    }
    __syncthreads();
  }
  const RowMatch<scalar_t, A> match(n, m, p, dxr, dyr);
  auto sx = [&](int64_t i) { return KT::from_key(smem.sorted.x[i]); };
  auto sy = [&](int64_t j) { return KT::from_key(smem.sorted.y[j]); };
  double part = 0.0;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    part += match.rank(k * kThreads + t, KT::from_key(kx[k]), kPosX ? px[k] : 0, KT::from_key(ky[k]),
                       kPosY ? py[k] : 0, sx, sy);
  }
  const double sum = Reduce(reduce).Sum(part);
  if (t == 0) loss[row] = match.loss(sum);
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
  // A chunk holds at most max(max_sort_items(), len) < 2^31 items: 32-bit index math (64-bit
  // division is slow on the GPU), with no overflow as the grid stride is below 2^24.
  const uint32_t count = static_cast<uint32_t>(rows * len);
  const uint32_t len32 = static_cast<uint32_t>(len);
  const uint32_t stride = gridDim.x * blockDim.x;
  src += row0 * len;
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < count; e += stride) {
    const uint32_t i = e % len32;
    A a = static_cast<A>(src[e]);
    if (scale != nullptr) a = rn::mul(a, scale[((row0 + e / len32) / channels) * len + i]);
    keys[e] = KeyTraits<A>::to_key(a);
    if (pos != nullptr) pos[e] = static_cast<int32_t>(i);
  }
}

// Long rows: a block matches one sorted row pair (block-stride loops over its ranks). The sorted
// rows are those of the chunk (blockIdx.x); the outputs are those of row row0 + blockIdx.x.
// px (py) is null exactly when dx (dy) is.
template <typename scalar_t>
__global__ void __launch_bounds__(kMatchThreads)
    match_rows_kernel(const typename KeyTraits<at::opmath_type<scalar_t>>::Key* __restrict__ kx,
                      const int32_t* __restrict__ px,
                      const typename KeyTraits<at::opmath_type<scalar_t>>::Key* __restrict__ ky,
                      const int32_t* __restrict__ py, int64_t n, int64_t m, int p, int64_t row0,
                      scalar_t* __restrict__ loss, scalar_t* __restrict__ dx, scalar_t* __restrict__ dy) {
  using A = at::opmath_type<scalar_t>;
  using KT = KeyTraits<A>;
  using Reduce = cub::BlockReduce<double, kMatchThreads>;
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

  const RowMatch<scalar_t, A> match(n, m, p, dx, dy);
  auto sx = [&](int64_t i) { return KT::from_key(kx[i]); };
  auto sy = [&](int64_t j) { return KT::from_key(ky[j]); };
  double part = 0.0;
  const int64_t len = n > m ? n : m;
  for (int64_t r = threadIdx.x; r < len; r += kMatchThreads) {
    const A vx = r < n ? sx(r) : A(0);
    const A vy = r < m ? sy(r) : A(0);
    part += match.rank(r, vx, r < n && px != nullptr ? px[r] : 0, vy, r < m && py != nullptr ? py[r] : 0, sx, sy);
  }
  const double sum = Reduce(reduce).Sum(part);
  if (threadIdx.x == 0) loss[row] = match.loss(sum);
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

// The lowest key bit that can tell two values of a row apart. float16 and bfloat16 values are
// widened to float32 exactly, so the low 13 (float16) or 16 (bfloat16) bits of their float32 bits
// are zero, and those of the key (KeyTraits<float>) are zero for a non-negative value and all ones
// for a negative one (it flips every bit of those): the higher bits determine the key, and the
// radix sorts skip the rest. Scaled values (the normalized op) are float32 products: every bit.
template <typename scalar_t>
int sort_begin_bit(bool scaled) {
  if (scaled) return 0;
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    return 13;
  } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    return 16;
  } else {
    return 0;
  }
}

template <typename scalar_t, int kThreads, int kItems, bool kPosX, bool kPosY>
void launch_block_kernel(const Rows<scalar_t>& a, int begin_bit, cudaStream_t stream) {
  for (int64_t r0 = 0; r0 < a.rows; r0 += kMaxGridX) {
    const unsigned grid = static_cast<unsigned>(std::min(a.rows - r0, kMaxGridX));
    block_row_kernel<scalar_t, kThreads, kItems, kPosX, kPosY><<<grid, kThreads, 0, stream>>>(
        a.x, a.y, a.n, a.m, a.p, a.scale_x, a.scale_y, a.channels, r0, begin_bit, a.loss, a.dx, a.dy);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, int kThreads, int kItems>
void launch_block_rows(const Rows<scalar_t>& a, int begin_bit, cudaStream_t stream) {
  if (a.dx != nullptr && a.dy != nullptr) return launch_block_kernel<scalar_t, kThreads, kItems, true, true>(a, begin_bit, stream);
  if (a.dx != nullptr) return launch_block_kernel<scalar_t, kThreads, kItems, true, false>(a, begin_bit, stream);
  if (a.dy != nullptr) return launch_block_kernel<scalar_t, kThreads, kItems, false, true>(a, begin_bit, stream);
  launch_block_kernel<scalar_t, kThreads, kItems, false, false>(a, begin_bit, stream);
}

template <typename T>
T* scratch(int64_t count, const at::TensorOptions& bytes, at::Tensor& holder) {
  holder = at::empty({std::max<int64_t>(count, 1) * static_cast<int64_t>(sizeof(T))}, bytes);
  return reinterpret_cast<T*>(holder.data_ptr());
}

// Items per segmented sort: kMaxSortItems, or PDL_EXT_CUDA_MAX_SORT_ITEMS when set (read once per
// process), a debug knob that lets tests reach segmented_rows' chunking with small inputs.
int64_t max_sort_items() {
  static const int64_t limit = [] {
    const char* env = std::getenv("PDL_EXT_CUDA_MAX_SORT_ITEMS");
    if (env == nullptr || env[0] == '\0') return kMaxSortItems;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(errno == 0 && end != env && *end == '\0' && v >= 1 && v <= std::numeric_limits<int>::max(),
                "PDL_EXT_CUDA_MAX_SORT_ITEMS must be an integer from 1 to 2^31 - 1, got '", env, "'");
    return static_cast<int64_t>(v);
  }();
  return limit;
}

// Sorts `segments` rows of `len` keys (with their positions when pos != nullptr) by key bits
// [begin_bit, end of key) on the stream; keys and pos are left pointing at the buffers that hold
// the sorted result.
template <typename Key>
void sort_rows(Key*& keys, Key* keys_alt, int32_t*& pos, int32_t* pos_alt, int64_t segments, int64_t len,
               const int32_t* offsets, int begin_bit, const at::TensorOptions& bytes, cudaStream_t stream) {
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
                                                            offsets, offsets + 1, begin_bit, kEndBit, stream));
    void* tp = scratch<uint8_t>(static_cast<int64_t>(temp_bytes), bytes, temp);
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(tp, temp_bytes, kb, vb, num_items, num_segments,
                                                            offsets, offsets + 1, begin_bit, kEndBit, stream));
    pos = vb.Current();
  } else {
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(nullptr, temp_bytes, kb, num_items, num_segments,
                                                           offsets, offsets + 1, begin_bit, kEndBit, stream));
    void* tp = scratch<uint8_t>(static_cast<int64_t>(temp_bytes), bytes, temp);
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(tp, temp_bytes, kb, num_items, num_segments,
                                                           offsets, offsets + 1, begin_bit, kEndBit, stream));
  }
  keys = kb.Current();
}

// Long rows: per chunk of rows, keys -> segmented sort -> fused match; scratch is O(chunk * (N + M)).
template <typename scalar_t>
void segmented_rows(const Rows<scalar_t>& a, int begin_bit, const at::TensorOptions& options, cudaStream_t stream) {
  using Key = typename KeyTraits<at::opmath_type<scalar_t>>::Key;
  const at::TensorOptions bytes = options.dtype(at::kByte);
  const int64_t n = a.n, m = a.m;
  // Rows per chunk: chunk * max(n, m) <= max_sort_items(), or one row (n, m < 2^31 by the input check).
  const int64_t chunk = std::max<int64_t>(1, std::min(max_sort_items() / std::max(n, m), kMaxGridX));
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
    sort_rows(kx, kx1, px, px1, cr, n, off_x.const_data_ptr<int32_t>(), begin_bit, bytes, stream);
    sort_rows(ky, ky1, py, py1, cr, m, off_y.const_data_ptr<int32_t>(), begin_bit, bytes, stream);
    match_rows_kernel<scalar_t><<<static_cast<unsigned>(cr), kMatchThreads, 0, stream>>>(
        kx, px, ky, py, n, m, a.p, r0, a.loss, a.dx, a.dy);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
void forward_rows(const Rows<scalar_t>& a, const at::TensorOptions& options, cudaStream_t stream) {
  using Key = typename KeyTraits<at::opmath_type<scalar_t>>::Key;
  const int begin_bit = sort_begin_bit<scalar_t>(a.scale_x != nullptr || a.scale_y != nullptr);
  const int64_t len = std::max(a.n, a.m);
  // Tiles of 128, 256, 512, 1024, 2048 (and 4096) atoms: rows of those lengths fill theirs exactly.
  if (len <= 128) return launch_block_rows<scalar_t, 64, 2>(a, begin_bit, stream);
  if (len <= 256) return launch_block_rows<scalar_t, 128, 2>(a, begin_bit, stream);
  if (len <= 512) return launch_block_rows<scalar_t, 128, 4>(a, begin_bit, stream);
  if (len <= 1024) return launch_block_rows<scalar_t, 256, 4>(a, begin_bit, stream);
  if (len <= 2048) return launch_block_rows<scalar_t, 256, 8>(a, begin_bit, stream);
  // 64-bit keys of a 4096 tile would need 64 KiB of sorted keys: above the static shared limit.
  if constexpr (sizeof(Key) == 4) {
    if (len <= 4096) return launch_block_rows<scalar_t, 512, 8>(a, begin_bit, stream);
  }
  segmented_rows(a, begin_bit, options, stream);
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
  at::Tensor out = b.out;
  if (out.numel() > 0) ::pdl_ext::cuda::normalize_backward_cuda(b.grad, b.g, b.f, b.norm, out);
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
