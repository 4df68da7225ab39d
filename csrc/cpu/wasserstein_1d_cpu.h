#pragma once

#include "../wasserstein_1d.h"

namespace pdl_ext {
namespace cpu {

// Forward of the fused op on the CPU: (W_p^p per row, dW/dx or empty, dW/dy or empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor> wasserstein_1d_fwd_cpu(const at::Tensor& x,
                                                                      const at::Tensor& y, int64_t p,
                                                                      bool grad_x, bool grad_y);

// Fused L2 normalization over channels, then per-channel W_p^p over positions. x (B, C, N), y (B, C, M):
// (W (B, C), dW/du_x or empty, dW/du_y or empty, ||x|| (B, N), ||y|| (B, M)), u the normalized features.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> normalized_wasserstein_1d_fwd_cpu(
    const at::Tensor& x, const at::Tensor& y, int64_t p, bool grad_x, bool grad_y);

// ||x[b, :, n]||_2 of contiguous (B, C, N) features of any float dtype: (B, N) in the opmath dtype, the
// squares summed in double over the channels (read once, in their own dtype; no float64 copy); NaN
// where that sum is not finite (an inf or NaN feature at the position).
at::Tensor channel_norm_cpu(const at::Tensor& x);

// grad (B, C), g = dW/du (B, C, N), f (B, C, N), norm (B, N) -> dL/df (B, C, N).
at::Tensor normalized_wasserstein_1d_bwd_cpu(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& f,
                                             const at::Tensor& norm);

}  // namespace cpu
}  // namespace pdl_ext
