#pragma once

#include "../wasserstein_1d.h"

namespace pdl_ext {
namespace cpu {

// Forward of the fused op on the CPU: (W_p^p per row, dW/dx or empty, dW/dy or empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor> wasserstein_1d_fwd_cpu(const at::Tensor& x,
                                                                      const at::Tensor& y, int64_t p,
                                                                      bool grad_x, bool grad_y);

}  // namespace cpu
}  // namespace pdl_ext
