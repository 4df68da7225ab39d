// CUDA kernels over the channels of (B, C, N) features at each position (csrc/cuda/channel_norm.cu),
// for the normalized_wasserstein_1d ops. Plain C++ declarations: the shared code may include this.
#pragma once

#include <ATen/core/Tensor.h>

namespace pdl_ext {
namespace cuda {

// Channel norms of x: contiguous CUDA (B, C, N) of float16, bfloat16, float32 or float64. Returns
// (B, N) of at::toOpMathType(x.scalar_type()) with out[b, i] = sqrt(sum_c x[b, c, i]^2), the squares
// summed in double (no overflow of float32 squares) and rounded once at the end. Reads x once, in
// its own dtype.
at::Tensor channel_norm_cuda(const at::Tensor& x);

// The normalization's backward (normalized_wasserstein_1d_bwd), into out (B, C, N) of g's dtype:
//   s[b, i] = sum_c grad[b, c] g[b, c, i] f[b, c, i]
//   out[b, c, i] = normalize_grad(grad[b, c] g[b, c, i], f[b, c, i], s[b, i], norm[b, i])
// g, f, out contiguous (B, C, N) of one dtype; grad (B, C) and norm (B, N) contiguous in its opmath
// dtype (as plan_normalized_backward makes them), all on the current CUDA device.
void normalize_backward_cuda(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& f,
                             const at::Tensor& norm, at::Tensor& out);

}  // namespace cuda
}  // namespace pdl_ext
