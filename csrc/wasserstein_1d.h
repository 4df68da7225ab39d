// Declarations shared by the op registration and the device kernels of wasserstein_1d.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace pdl_ext {

// Validates the operands of the wasserstein_1d ops; the messages name the argument, the expected
// and the received value (the Python wrappers run the same checks first, with the same wording).
void check_wasserstein_1d_inputs(const at::Tensor& x, const at::Tensor& y, int64_t p);

// The same for the normalized op: x (B, C, N) and y (B, C, M).
void check_normalized_wasserstein_1d_inputs(const at::Tensor& x, const at::Tensor& y, int64_t p);

}  // namespace pdl_ext
