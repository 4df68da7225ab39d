// CUDA kernels over the channels of (B, C, N) features at each position: the channel norms of the
// normalized_wasserstein_1d forward and the normalization's backward (declared in channel_norm.h).
//
// Both reduce over C at each position (b, i). A block covers a tile of consecutive positions of one
// batch item (threadIdx.x) times every channel, the channels split in `groups` contiguous ranges
// (threadIdx.y): a warp reads 32 consecutive positions of one channel (coalesced), each thread sums
// its range in channel order, and the groups' partial sums are added in group order through shared
// memory (deterministic; with one group, the CPU kernel's order).
#include "channel_norm.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include <math_constants.h>

#include "../wasserstein_math.h"
#include "device_math.h"

namespace pdl_ext {
namespace gpu {
namespace {

constexpr int kMaxThreads = 1024;         // per block
constexpr int kMaxGroups = 32;            // channel ranges per block
constexpr int kMinChannelsPerGroup = 16;  // below that a thread's loop is too short to pay a group
constexpr int kMinBlockThreads = 256;
constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();

// Launch geometry: block (positions, groups), one tile of `positions` positions per block and grid
// step (a grid-stride loop over the batch * tiles_per_row tiles).
//   groups: powers of 2 up to 32, while every group keeps at least 16 channels;
//   positions: 32 (a warp), more when the groups are few, so that a block has at least 256 threads.
// (B=8, C=512, N=256): groups 32, positions 32: 1024 threads (16 channels each), 8 * 8 = 64 blocks.
// (B=8, C=64, N=65536): groups 4, positions 64: 256 threads (16 channels each), 8 * 1024 = 8192 blocks.
struct Geometry {
  int positions = 0, groups = 0;
  int64_t tiles_per_row = 0, tiles = 0;
  unsigned grid = 0;
};

Geometry geometry(int64_t batch, int64_t channels, int64_t n) {
  Geometry g;
  g.groups = 1;
  while (g.groups < kMaxGroups && int64_t(g.groups) * 2 * kMinChannelsPerGroup <= channels) g.groups *= 2;
  g.positions = std::max(32, kMinBlockThreads / g.groups);  // positions * groups <= 1024
  g.tiles_per_row = (n + g.positions - 1) / g.positions;
  g.tiles = batch * g.tiles_per_row;
  g.grid = static_cast<unsigned>(std::clamp<int64_t>(g.tiles, 1, kMaxGrid));
  return g;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    channel_norm_kernel(const scalar_t* __restrict__ x, int64_t channels, int64_t n, int64_t tiles_per_row,
                        int64_t tiles, at::opmath_type<scalar_t>* __restrict__ out) {
  using A = at::opmath_type<scalar_t>;
  __shared__ double part[kMaxThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int positions = blockDim.x, groups = blockDim.y;
  const int64_t c0 = channels * ty / groups, c1 = channels * (ty + 1) / groups;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t b = tile / tiles_per_row;
    const int64_t i = (tile % tiles_per_row) * positions + tx;
    double s = 0.0;
    if (i < n) {
      const scalar_t* p = x + (b * channels + c0) * n + i;
      for (int64_t c = c0; c < c1; ++c, p += n) {
        const double v = static_cast<double>(static_cast<A>(*p));
        s = __dadd_rn(s, __dmul_rn(v, v));  // no contraction: the CPU kernel's rounding
      }
    }
    part[ty * positions + tx] = s;
    __syncthreads();
    if (ty == 0 && i < n) {
      for (int k = 1; k < groups; ++k) s = __dadd_rn(s, part[k * positions + tx]);
      // A sum that is not finite (an inf or NaN feature) makes the norm NaN: the op's rule, as on the CPU.
      out[b * n + i] = isfinite(s) ? static_cast<A>(sqrt(s)) : static_cast<A>(CUDART_NAN);
    }
    __syncthreads();  // part is reused by the next tile
  }
}

// out[b, c, i] = normalize_grad(w[b, c] g[b, c, i], f[b, c, i], s[b, i], norm[b, i]) with
// s[b, i] = sum_c w[b, c] g[b, c, i] f[b, c, i]: the CPU kernel's per-element arithmetic, every
// product and sum rounded (device_math.h).
template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    normalize_bwd_kernel(const at::opmath_type<scalar_t>* __restrict__ w, const scalar_t* __restrict__ g,
                         const scalar_t* __restrict__ f, const at::opmath_type<scalar_t>* __restrict__ norm,
                         int64_t channels, int64_t n, int64_t tiles_per_row, int64_t tiles,
                         scalar_t* __restrict__ out) {
  using A = at::opmath_type<scalar_t>;
  __shared__ A part[kMaxThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int positions = blockDim.x, groups = blockDim.y;
  const int64_t c0 = channels * ty / groups, c1 = channels * (ty + 1) / groups;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t b = tile / tiles_per_row;
    const int64_t i = (tile % tiles_per_row) * positions + tx;
    const A* wb = w + b * channels;
    const int64_t base = b * channels * n + i;  // element (b, 0, i); channel c at base + c * n
    A s = A(0);
    if (i < n) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t e = base + c * n;
        s = rn::add(s, rn::mul(rn::mul(wb[c], static_cast<A>(g[e])), static_cast<A>(f[e])));
      }
    }
    part[ty * positions + tx] = s;
    __syncthreads();
    // Every thread adds the groups' partial sums in group order: all get the same s.
    s = part[tx];
    for (int k = 1; k < groups; ++k) s = rn::add(s, part[k * positions + tx]);
    if (i < n) {
      const A r = norm[b * n + i];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t e = base + c * n;
        out[e] = static_cast<scalar_t>(
            normalize_grad_rn<A>(rn::mul(wb[c], static_cast<A>(g[e])), static_cast<A>(f[e]), s, r));
      }
    }
    __syncthreads();  // part is reused by the next tile
  }
}

}  // namespace
}  // namespace gpu

namespace cuda {

at::Tensor channel_norm_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "channel_norm_cuda: x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "channel_norm_cuda: x must be a contiguous (B, C, N) tensor, got shape ",
              x.sizes(), x.is_contiguous() ? "" : " (not contiguous)");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t batch = x.size(0), channels = x.size(1), n = x.size(2);
  at::Tensor out = at::empty({batch, n}, x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (out.numel() == 0) return out;
  const gpu::Geometry geo = gpu::geometry(batch, channels, n);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_norm_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    gpu::channel_norm_kernel<scalar_t><<<geo.grid, dim3(geo.positions, geo.groups), 0, stream>>>(
        x.const_data_ptr<scalar_t>(), channels, n, geo.tiles_per_row, geo.tiles, out.mutable_data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void normalize_backward_cuda(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& f,
                             const at::Tensor& norm, at::Tensor& out) {
  const int64_t batch = g.size(0), channels = g.size(1), n = g.size(2);
  if (out.numel() == 0) return;
  const gpu::Geometry geo = gpu::geometry(batch, channels, n);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "normalized_wasserstein_1d_bwd_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    gpu::normalize_bwd_kernel<scalar_t><<<geo.grid, dim3(geo.positions, geo.groups), 0, stream>>>(
        grad.const_data_ptr<A>(), g.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(),
        norm.const_data_ptr<A>(), channels, n, geo.tiles_per_row, geo.tiles, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace pdl_ext
