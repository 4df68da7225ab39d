// Declarations shared by the op registration and the device kernels of wasserstein_1d.
#pragma once

#include <ATen/core/Tensor.h>

#include <limits>
#include <tuple>

namespace pdl_ext {

// Longest row the kernels take (int32 positions): 2^31 - 1 items.
constexpr int64_t kMaxRowLength = 2147483647;

// Validates the operands of the wasserstein_1d ops; the messages name the argument, the expected
// and the received value (the Python wrappers run the same checks first, with the same wording).
void check_wasserstein_1d_inputs(const at::Tensor& x, const at::Tensor& y, int64_t p);

// The same for the normalized op: x (B, C, N) and y (B, C, M).
void check_normalized_wasserstein_1d_inputs(const at::Tensor& x, const at::Tensor& y, int64_t p);

// Device-agnostic set-up of a forward, shared by the CPU and CUDA kernels: checked contiguous
// operands, the allocated outputs, and (normalized op) the per-position channel norms.
struct ForwardPlan {
  at::Tensor x, y;                // contiguous operands
  at::Tensor loss, dx, dy;        // dx / dy are empty tensors when that gradient is not wanted
  at::Tensor norm_x, norm_y;      // normalized op: ||f|| over channels, (B, N) in opmath dtype
  at::Tensor inv_x, inv_y;        // normalized op: 1 / (||f|| + eps)
  int64_t rows = 0, n = 0, m = 0, channels = 1;
};
ForwardPlan plan_forward(const at::Tensor& x, const at::Tensor& y, int64_t p, bool grad_x, bool grad_y,
                         bool normalized);

// Device-agnostic set-up of the normalized backward: contiguous g (B, C, N), f in g's dtype,
// norm and grad in opmath dtype, and the allocated output.
struct NormalizedBackwardPlan {
  at::Tensor grad, g, f, norm, out;
  int64_t batch = 0, channels = 0, n = 0;
};
NormalizedBackwardPlan plan_normalized_backward(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& f,
                                                const at::Tensor& norm);

#ifdef WITH_CUDA
namespace cuda {
// ||x[b, :, n]||_2 over the channels of contiguous (B, C, N) CUDA features of any float dtype: (B, N) in
// at::toOpMathType(x.scalar_type()), the squares summed in double, NaN where that double sum is not
// finite (the contract of the CPU kernel cpu::channel_norm_cpu); csrc/cuda/channel_norm.cu.
at::Tensor channel_norm_cuda(const at::Tensor& x);
}  // namespace cuda
#endif

}  // namespace pdl_ext
