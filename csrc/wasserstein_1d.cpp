// The wasserstein_1d ops: schemas, the autograd-facing composite, the backward scale, and the CPU
// kernel registration. CUDA kernels register themselves in cuda/wasserstein_1d_cuda.cu.
//
//   wasserstein_1d(x, y, p) -> W_p^p per row                 (composite: picks which gradients to make)
//   wasserstein_1d_fwd(x, y, p, grad_x, grad_y) -> (W, dW/dx, dW/dy)   (device kernels)
//   wasserstein_1d_bwd(grad, d) -> grad[..., None] * d       (the whole backward: one scale)
//   normalized_wasserstein_1d*(x, y, p): the same per channel of (B, C, N) features after an L2
//   normalization over channels at each position, fused into the kernels
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "cpu/simd_sort.h"
#include "cpu/wasserstein_1d_cpu.h"
#include "wasserstein_1d.h"
#include "wasserstein_math.h"

// `import pdl_ext._C` loads this library, which runs the TORCH_LIBRARY registrations below.
// _C.cpu_path() names the path of the CPU kernels here: "avx512" or "avx2" (vectorized sorts and
// matching) or "radix" (portable), as the processor and PDL_EXT_CPU_PATH allow; _C.cpu_sort() is its
// former name.
namespace {
PyObject* cpu_path(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(pdl_ext::cpu::cpu_path_name());
  } catch (const c10::Error& e) {  // a bad PDL_EXT_CPU_PATH
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
}
PyMethodDef module_methods[] = {
    {"cpu_path", cpu_path, METH_NOARGS, "The path of the CPU kernels: 'avx512', 'avx2' or 'radix'."},
    {"cpu_sort", cpu_path, METH_NOARGS, "Former name of cpu_path()."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, module_methods};
  return PyModule_Create(&module_def);
}
}

namespace pdl_ext {

void check_wasserstein_1d_inputs(const at::Tensor& x, const at::Tensor& y, int64_t p) {
  TORCH_CHECK(p == 1 || p == 2, "wasserstein_1d: p must be 1 or 2, got ", p);
  TORCH_CHECK(x.dim() >= 1, "wasserstein_1d: x must have at least 1 dimension (..., N), got shape ",
              x.sizes());
  TORCH_CHECK(y.dim() >= 1, "wasserstein_1d: y must have at least 1 dimension (..., M), got shape ",
              y.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "wasserstein_1d: x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "wasserstein_1d: y must have the dtype of x (",
              x.scalar_type(), "), got ", y.scalar_type());
  TORCH_CHECK(x.device() == y.device(), "wasserstein_1d: y must be on the device of x (", x.device(),
              "), got ", y.device());
  TORCH_CHECK(x.sizes().slice(0, x.dim() - 1) == y.sizes().slice(0, y.dim() - 1),
              "wasserstein_1d: x (..., N) and y (..., M) must have the same leading shape, got x ",
              x.sizes(), " and y ", y.sizes());
  TORCH_CHECK(x.size(-1) > 0, "wasserstein_1d: x rows must not be empty (N > 0), got shape ", x.sizes());
  TORCH_CHECK(y.size(-1) > 0, "wasserstein_1d: y rows must not be empty (M > 0), got shape ", y.sizes());
  // The kernels index a row's items with int32 positions.
  TORCH_CHECK_VALUE(x.size(-1) <= kMaxRowLength && y.size(-1) <= kMaxRowLength,
                    "wasserstein_1d: rows must hold at most 2^31 - 1 = ", kMaxRowLength,
                    " items, got x rows of N = ", x.size(-1), " and y rows of M = ", y.size(-1));
}

void check_normalized_wasserstein_1d_inputs(const at::Tensor& x, const at::Tensor& y, int64_t p) {
  TORCH_CHECK(x.dim() == 3, "normalized_wasserstein_1d: x must be (B, C, N), got shape ", x.sizes());
  TORCH_CHECK(y.dim() == 3, "normalized_wasserstein_1d: y must be (B, C, M), got shape ", y.sizes());
  check_wasserstein_1d_inputs(x, y, p);
}

namespace {

// Per-position norms over channels of contiguous (B, C, N) features: (B, N) in the opmath dtype,
// summed in float64 (the squares of float32 features above ~1.8e19 would overflow float32). Where
// that sum is not finite (an inf or NaN feature) the norm is NaN, which makes every normalized
// feature of the position NaN: all rows of the sample, values and gradients (the op's rule).
at::Tensor channel_norm(const at::Tensor& x) {
  if (x.device().is_cpu()) return cpu::channel_norm_cpu(x);
#ifdef WITH_CUDA
  if (x.device().is_cuda()) return cuda::channel_norm_cuda(x);
#endif
  // Other devices: a float64 reduction, through a float64 copy.
  const at::Tensor norm = at::linalg_vector_norm(x, 2, {1}, false, at::kDouble);
  return norm.masked_fill(norm.isfinite().logical_not(), std::numeric_limits<double>::quiet_NaN())
      .to(at::toOpMathType(x.scalar_type()));
}

}  // namespace

ForwardPlan plan_forward(const at::Tensor& x, const at::Tensor& y, int64_t p, bool grad_x, bool grad_y,
                         bool normalized) {
  ForwardPlan plan;
  if (normalized) {
    check_normalized_wasserstein_1d_inputs(x, y, p);
  } else {
    check_wasserstein_1d_inputs(x, y, p);
  }
  plan.x = x.contiguous();
  plan.y = y.contiguous();
  plan.n = x.size(-1);
  plan.m = y.size(-1);
  plan.rows = plan.x.numel() / plan.n;
  plan.loss = at::empty(x.sizes().slice(0, x.dim() - 1), x.options());
  plan.dx = grad_x ? at::empty_like(plan.x) : at::empty({0}, x.options());
  plan.dy = grad_y ? at::empty_like(plan.y) : at::empty({0}, y.options());
  if (normalized) {
    // Per-position norms over channels: 1/C of the features; kept for the backward.
    plan.channels = x.size(1);
    plan.norm_x = channel_norm(plan.x);
    plan.norm_y = channel_norm(plan.y);
    plan.inv_x = (plan.norm_x + kNormEps).reciprocal();
    plan.inv_y = (plan.norm_y + kNormEps).reciprocal();
  }
  return plan;
}

NormalizedBackwardPlan plan_normalized_backward(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& f,
                                                const at::Tensor& norm) {
  TORCH_CHECK(g.dim() == 3 && f.sizes() == g.sizes(), "normalized_wasserstein_1d_bwd: g and f must be (B, C, N) "
              "of equal shape, got ", g.sizes(), " and ", f.sizes());
  TORCH_CHECK(grad.sizes() == g.sizes().slice(0, 2), "normalized_wasserstein_1d_bwd: grad must be (B, C) = ",
              g.sizes().slice(0, 2), ", got ", grad.sizes());
  TORCH_CHECK(norm.dim() == 2 && norm.size(0) == g.size(0) && norm.size(1) == g.size(2),
              "normalized_wasserstein_1d_bwd: norm must be (B, N), got ", norm.sizes());
  TORCH_CHECK(f.device() == g.device() && grad.device() == g.device() && norm.device() == g.device(),
              "normalized_wasserstein_1d_bwd: grad, g, f and norm must be on one device, got ", grad.device(), ", ",
              g.device(), ", ", f.device(), " and ", norm.device());
  NormalizedBackwardPlan plan;
  plan.batch = g.size(0);
  plan.channels = g.size(1);
  plan.n = g.size(2);
  plan.g = g.contiguous();
  plan.f = f.contiguous().to(g.scalar_type());
  plan.norm = norm.contiguous().to(at::toOpMathType(g.scalar_type()));
  plan.grad = grad.contiguous().to(plan.norm.scalar_type());
  plan.out = at::empty_like(plan.g);
  return plan;
}

namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Whether the forward must make t's derivative: reverse mode will ask for it, or t carries a
// forward-mode tangent (torch.autograd.forward_ad, torch.func.jvp: level 0, as autograd's own
// formulas read it), whose product with the derivative is the output's tangent.
bool wants_derivative(const at::Tensor& t) {
  return (at::GradMode::is_enabled() && t.requires_grad()) || t._fw_grad(/*level=*/0).defined();
}

at::Tensor normalized_wasserstein_1d(const at::Tensor& x, const at::Tensor& y, int64_t p) {
  const bool grad_x = wants_derivative(x);
  const bool grad_y = wants_derivative(y);
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  static auto op = find_op<Out(const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>(
      "pdl_ext::normalized_wasserstein_1d_fwd");
  return std::get<0>(op.call(x, y, p, grad_x, grad_y));
}

at::Tensor wasserstein_1d(const at::Tensor& x, const at::Tensor& y, int64_t p) {
  // Only the gradients autograd will ask for are computed (a loss's target needs none).
  const bool grad_x = wants_derivative(x);
  const bool grad_y = wants_derivative(y);
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  static auto op =
      find_op<Out(const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>("pdl_ext::wasserstein_1d_fwd");
  return std::get<0>(op.call(x, y, p, grad_x, grad_y));
}

at::Tensor wasserstein_1d_bwd(const at::Tensor& grad, const at::Tensor& d) {
  return d * grad.unsqueeze(-1).to(d.scalar_type());
}

}  // namespace

TORCH_LIBRARY(pdl_ext, m) {
  m.def("wasserstein_1d(Tensor x, Tensor y, int p) -> Tensor");
  m.def("wasserstein_1d_fwd(Tensor x, Tensor y, int p, bool grad_x, bool grad_y) -> (Tensor, Tensor, Tensor)");
  m.def("wasserstein_1d_bwd(Tensor grad, Tensor d) -> Tensor");
  m.def("normalized_wasserstein_1d(Tensor x, Tensor y, int p) -> Tensor");
  m.def("normalized_wasserstein_1d_fwd(Tensor x, Tensor y, int p, bool grad_x, bool grad_y) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("normalized_wasserstein_1d_bwd(Tensor grad, Tensor g, Tensor f, Tensor norm) -> Tensor");
}

TORCH_LIBRARY_IMPL(pdl_ext, CompositeImplicitAutograd, m) {
  m.impl("wasserstein_1d", &wasserstein_1d);
  m.impl("normalized_wasserstein_1d", &normalized_wasserstein_1d);
}

TORCH_LIBRARY_IMPL(pdl_ext, CompositeExplicitAutograd, m) {
  m.impl("wasserstein_1d_bwd", &wasserstein_1d_bwd);
}

TORCH_LIBRARY_IMPL(pdl_ext, CPU, m) {
  m.impl("wasserstein_1d_fwd", &cpu::wasserstein_1d_fwd_cpu);
  m.impl("normalized_wasserstein_1d_fwd", &cpu::normalized_wasserstein_1d_fwd_cpu);
  m.impl("normalized_wasserstein_1d_bwd", &cpu::normalized_wasserstein_1d_bwd_cpu);
}

}  // namespace pdl_ext
