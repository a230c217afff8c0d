// isnet_kernels._C: CPU kernels of the elementwise relevance primitives (docs/kernels.md), registered with PyTorch's
// dispatcher as torch.ops.isnet_kernels.*. Semantics and argument order are TorchPrimitives'
// (isnet_kernels/ops/primitives.py); isnet_kernels/cpp.py registers the fake (meta) kernels and wraps them.
//
// The Python module has no functions: importing it loads this library, whose static initialisers register the
// schemas (TORCH_LIBRARY) and the CPU kernels (TORCH_LIBRARY_IMPL). Each operator below checks its arguments,
// allocates its outputs (NaN-filled when ISNET_KERNELS_POISON=1) and runs one fused loop nest of kernels.inc for
// its dtype (float, double, half, bfloat16) and the best instruction set this CPU has.
//
// Build time: torch's headers cost about ten seconds per translation unit, so only this file includes the heavy
// ones (torch/library.h, at::Tensor); the loop nests compile in kernels.cpp and kernels_avx2.cpp against light
// headers, in parallel with this one when ninja is present.
#include <Python.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>

#include "../common/operator_checks.h"
#include "kernels.h"

namespace isnet_kernels {

void parallel_for(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f) {
  at::parallel_for(begin, end, grain, [&](int64_t chunk_begin, int64_t chunk_end) { f(chunk_begin, chunk_end); });
}

void bad_index(const char* op, const int64_t* indices, int64_t count, int64_t length) {
  int64_t index = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (indices[i] < 0 || indices[i] >= length) {
      index = indices[i];
      break;
    }
  }
  TORCH_CHECK(false, "isnet_kernels::", op, ": indices must lie in [0, length = ", length, "), got ", index);
}

// The best kernel set this CPU runs: "avx2" or "default".
const char* cpu_capability() {
#if ISNET_KERNELS_AVX2
  static const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return avx2 ? "avx2" : "default";
#else
  return "default";
#endif
}

namespace {

// Whether this call runs the AVX2 kernels: the CPU has them, and neither ISNET_KERNELS_CPU=default nor torch's own
// ATEN_CPU_CAPABILITY=default asks for the baseline ones.
bool use_avx2() {
  if (std::strcmp(cpu_capability(), "avx2") != 0) {
    return false;
  }
  for (const char* name : {"ISNET_KERNELS_CPU", "ATEN_CPU_CAPABILITY"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && std::strcmp(value, "default") == 0) {
      return false;
    }
  }
  return true;
}

// Calls kernel<scalar_t>(args...) from the best kernel set for this call.
#if ISNET_KERNELS_AVX2
#define ISNET_RUN_KERNEL(kernel, ...)      \
  do {                                     \
    if (use_avx2()) {                      \
      avx2::kernel(__VA_ARGS__);           \
    } else {                               \
      base::kernel(__VA_ARGS__);           \
    }                                      \
  } while (0)
#else
#define ISNET_RUN_KERNEL(kernel, ...) base::kernel(__VA_ARGS__)
#endif

// The argument checks and output buffers of ../common/operator_checks.h, for CPU tensors.
constexpr c10::DeviceType kCPU = c10::DeviceType::CPU;

void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype) {
  ::isnet_kernels::check_tensor(kCPU, op, name, t, dtype);
}

#define ISNET_DISPATCH(dtype, op, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, op, __VA_ARGS__)

// ---- epsilon rule ------------------------------------------------------------------------------------------

at::Tensor stab_divide(const at::Tensor& R, const at::Tensor& z, double eps) {
  constexpr const char* op = "stab_divide";
  check_tensor(op, "R", R, R.scalar_type());
  check_tensor(op, "z", z, R.scalar_type());
  const MapSizes n = check_map_activation(op, "R", R, "z", z);
  at::Tensor s = new_output(R.sizes(), R, poisoning());
  ISNET_DISPATCH(R.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(stab_divide_kernel<scalar_t>, R.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                     s.mutable_data_ptr<scalar_t>(), n, eps);
  });
  return s;
}

at::Tensor mul_activation(const at::Tensor& c, const at::Tensor& a) {
  constexpr const char* op = "mul_activation";
  check_tensor(op, "c", c, c.scalar_type());
  check_tensor(op, "a", a, c.scalar_type());
  const MapSizes n = check_map_activation(op, "c", c, "a", a);
  at::Tensor out = new_output(c.sizes(), c, poisoning());
  ISNET_DISPATCH(c.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(mul_activation_kernel<scalar_t>, c.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                     out.mutable_data_ptr<scalar_t>(), n);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> epsilon_backward_input(const at::Tensor& G, const at::Tensor& a,
                                                          const at::Tensor& c) {
  constexpr const char* op = "epsilon_backward_input";
  check_tensor(op, "G", G, G.scalar_type());
  check_tensor(op, "a", a, G.scalar_type());
  check_tensor(op, "c", c, G.scalar_type());
  const MapSizes n = check_map_activation(op, "G", G, "a", a);
  check_same_shape(op, "c", c, "G", G);
  const bool poison = poisoning();
  at::Tensor U = new_output(G.sizes(), G, poison);
  at::Tensor dA = new_output(a.sizes(), a, poison);
  if (n.N > 0 && (n.M == 0 || G.numel() == 0)) {
    dA.zero_();  // a sum over no maps
  }
  ISNET_DISPATCH(G.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(epsilon_backward_input_kernel<scalar_t>, G.const_data_ptr<scalar_t>(),
                     a.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), U.mutable_data_ptr<scalar_t>(),
                     dA.mutable_data_ptr<scalar_t>(), n);
  });
  return {U, dA};
}

std::tuple<at::Tensor, at::Tensor> epsilon_backward_stab(const at::Tensor& V, const at::Tensor& s,
                                                         const at::Tensor& z, double eps) {
  constexpr const char* op = "epsilon_backward_stab";
  check_tensor(op, "V", V, V.scalar_type());
  check_tensor(op, "s", s, V.scalar_type());
  check_tensor(op, "z", z, V.scalar_type());
  const MapSizes n = check_map_activation(op, "V", V, "z", z);
  check_same_shape(op, "s", s, "V", V);
  const bool poison = poisoning();
  at::Tensor dR = new_output(V.sizes(), V, poison);
  at::Tensor dZ = new_output(z.sizes(), z, poison);
  ISNET_DISPATCH(V.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(epsilon_backward_stab_kernel<scalar_t>, V.const_data_ptr<scalar_t>(),
                     s.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), dR.mutable_data_ptr<scalar_t>(),
                     dZ.mutable_data_ptr<scalar_t>(), n, eps);
  });
  return {dR, dZ};
}

// ---- residual add y = x + f ------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> residual_forward(const at::Tensor& R, const at::Tensor& x, const at::Tensor& f,
                                                    const at::Tensor& y, double eps) {
  constexpr const char* op = "residual_forward";
  check_tensor(op, "R", R, R.scalar_type());
  check_tensor(op, "x", x, R.scalar_type());
  check_tensor(op, "f", f, R.scalar_type());
  check_tensor(op, "y", y, R.scalar_type());
  const MapSizes n = check_map_activation(op, "R", R, "x", x);
  check_same_shape(op, "f", f, "x", x);
  check_same_shape(op, "y", y, "x", x);
  const bool poison = poisoning();
  at::Tensor Rx = new_output(R.sizes(), R, poison);
  at::Tensor Rf = new_output(R.sizes(), R, poison);
  ISNET_DISPATCH(R.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(residual_forward_kernel<scalar_t>, R.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                     f.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), Rx.mutable_data_ptr<scalar_t>(),
                     Rf.mutable_data_ptr<scalar_t>(), n, eps);
  });
  return {Rx, Rf};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_backward(
    const at::Tensor& Gx, const at::Tensor& Gf, const at::Tensor& R, const at::Tensor& x, const at::Tensor& f,
    const at::Tensor& y, double eps) {
  constexpr const char* op = "residual_backward";
  check_tensor(op, "Gx", Gx, Gx.scalar_type());
  check_tensor(op, "Gf", Gf, Gx.scalar_type());
  check_tensor(op, "R", R, Gx.scalar_type());
  check_tensor(op, "x", x, Gx.scalar_type());
  check_tensor(op, "f", f, Gx.scalar_type());
  check_tensor(op, "y", y, Gx.scalar_type());
  const MapSizes n = check_map_activation(op, "R", R, "x", x);
  check_same_shape(op, "Gx", Gx, "R", R);
  check_same_shape(op, "Gf", Gf, "R", R);
  check_same_shape(op, "f", f, "x", x);
  check_same_shape(op, "y", y, "x", x);
  const bool poison = poisoning();
  at::Tensor dR = new_output(R.sizes(), R, poison);
  at::Tensor dx = new_output(x.sizes(), x, poison);
  at::Tensor df = new_output(x.sizes(), x, poison);
  at::Tensor dy = new_output(x.sizes(), x, poison);
  ISNET_DISPATCH(R.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(residual_backward_kernel<scalar_t>, Gx.const_data_ptr<scalar_t>(),
                     Gf.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                     f.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dR.mutable_data_ptr<scalar_t>(),
                     dx.mutable_data_ptr<scalar_t>(), df.mutable_data_ptr<scalar_t>(), dy.mutable_data_ptr<scalar_t>(),
                     n, eps);
  });
  return {dR, dx, df, dy};
}

// ---- max-pool, winner-take-all ----------------------------------------------------------------------------


at::Tensor maxpool_forward(const at::Tensor& R, const at::Tensor& z, const at::Tensor& indices, int64_t length,
                           double eps) {
  constexpr const char* op = "maxpool_forward";
  PoolSizes p = check_pool(kCPU, op, R, z, indices);
  TORCH_CHECK(length >= 0, "isnet_kernels::", op, ": length must be >= 0, got ", length);
  p.length = length;
  at::Tensor out = new_output({p.B, p.M, p.C, length}, R, poisoning());
  ISNET_DISPATCH(R.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(maxpool_forward_kernel<scalar_t>, R.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                     indices.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), p, eps);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> maxpool_backward(const at::Tensor& G, const at::Tensor& R, const at::Tensor& z,
                                                    const at::Tensor& indices, double eps) {
  constexpr const char* op = "maxpool_backward";
  check_tensor(op, "G", G, G.scalar_type());
  PoolSizes p = check_pool(kCPU, op, R, z, indices);
  TORCH_CHECK(R.scalar_type() == G.scalar_type(), "isnet_kernels::", op, ": R must have dtype ", G.scalar_type(),
              " (the dtype of the first argument), got ", R.scalar_type());
  TORCH_CHECK(G.dim() == 4 && G.size(0) == p.B && G.size(1) == p.M && G.size(2) == p.C, "isnet_kernels::", op,
              ": G must have shape (B, M, C, length) = [", p.B, ", ", p.M, ", ", p.C, ", length] to match R of shape ",
              R.sizes(), ", got ", G.sizes());
  p.length = G.size(3);
  const bool poison = poisoning();
  at::Tensor dR = new_output(R.sizes(), R, poison);
  at::Tensor dz = new_output(z.sizes(), z, poison);
  if (p.M == 0 && dz.numel() > 0) {
    dz.zero_();  // a sum over no maps
  }
  ISNET_DISPATCH(R.scalar_type(), op, [&] {
    ISNET_RUN_KERNEL(maxpool_backward_kernel<scalar_t>, G.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(),
                     z.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), dR.mutable_data_ptr<scalar_t>(),
                     dz.mutable_data_ptr<scalar_t>(), p, eps);
  });
  return {dR, dz};
}

// ---- average pooling (avg_pool2d, adaptive_avg_pool2d), epsilon ------------------------------------------

// The operators' shared bodies, given a checked plan. The backward kernel writes dz and da even when M = 0 (sums
// over no maps); `da` is an empty tensor when not computed.
at::Tensor avgpool_forward_impl(const at::Tensor& R, const at::Tensor& a, const at::Tensor& z,
                                const AvgPoolPlan& plan, double eps) {
  at::Tensor out = new_output({plan.B, plan.M, plan.C, a.size(2), a.size(3)}, R, poisoning());
  ISNET_DISPATCH(R.scalar_type(), "avgpool_forward", [&] {
    ISNET_RUN_KERNEL(avgpool_forward_kernel<scalar_t>, R.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                     z.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), plan, eps);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> avgpool_backward_impl(const at::Tensor& G, const at::Tensor& R,
                                                                     const at::Tensor& a, const at::Tensor& z,
                                                                     const AvgPoolPlan& plan, double eps,
                                                                     bool compute_da) {
  const bool poison = poisoning();
  at::Tensor dR = new_output(R.sizes(), R, poison);
  at::Tensor dz = new_output(z.sizes(), z, poison);
  at::Tensor da = compute_da ? new_output(a.sizes(), a, poison) : a.new_empty({0});
  ISNET_DISPATCH(R.scalar_type(), "avgpool_backward", [&] {
    ISNET_RUN_KERNEL(avgpool_backward_kernel<scalar_t>, G.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(),
                     a.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), dR.mutable_data_ptr<scalar_t>(),
                     dz.mutable_data_ptr<scalar_t>(), compute_da ? da.mutable_data_ptr<scalar_t>() : nullptr, plan,
                     eps);
  });
  return {dR, dz, da};
}

at::Tensor avgpool_forward(const at::Tensor& R, const at::Tensor& a, const at::Tensor& z, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override, double eps) {
  constexpr const char* op = "avgpool_forward";
  const AvgPoolPlan plan = avgpool_plan(kCPU, op, nullptr, R, a, z, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, divisor_override);
  return avgpool_forward_impl(R, a, z, plan, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> avgpool_backward(
    const at::Tensor& G, const at::Tensor& R, const at::Tensor& a, const at::Tensor& z, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
    std::optional<int64_t> divisor_override, double eps, bool compute_da) {
  constexpr const char* op = "avgpool_backward";
  const AvgPoolPlan plan = avgpool_plan(kCPU, op, &G, R, a, z, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, divisor_override);
  return avgpool_backward_impl(G, R, a, z, plan, eps, compute_da);
}

at::Tensor adaptive_avgpool_forward(const at::Tensor& R, const at::Tensor& a, const at::Tensor& z, double eps) {
  constexpr const char* op = "adaptive_avgpool_forward";
  return avgpool_forward_impl(R, a, z, adaptive_avgpool_plan(kCPU, op, nullptr, R, a, z), eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_avgpool_backward(const at::Tensor& G, const at::Tensor& R,
                                                                         const at::Tensor& a, const at::Tensor& z,
                                                                         double eps, bool compute_da) {
  constexpr const char* op = "adaptive_avgpool_backward";
  return avgpool_backward_impl(G, R, a, z, adaptive_avgpool_plan(kCPU, op, &G, R, a, z), eps, compute_da);
}

}  // namespace
}  // namespace isnet_kernels

TORCH_LIBRARY(isnet_kernels, m) {
  m.def("stab_divide(Tensor R, Tensor z, float eps) -> Tensor");
  m.def("mul_activation(Tensor c, Tensor a) -> Tensor");
  m.def("epsilon_backward_input(Tensor G, Tensor a, Tensor c) -> (Tensor, Tensor)");
  m.def("epsilon_backward_stab(Tensor V, Tensor s, Tensor z, float eps) -> (Tensor, Tensor)");
  m.def("residual_forward(Tensor R, Tensor x, Tensor f, Tensor y, float eps) -> (Tensor, Tensor)");
  m.def(
      "residual_backward(Tensor Gx, Tensor Gf, Tensor R, Tensor x, Tensor f, Tensor y, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("maxpool_forward(Tensor R, Tensor z, Tensor indices, int length, float eps) -> Tensor");
  m.def("maxpool_backward(Tensor G, Tensor R, Tensor z, Tensor indices, float eps) -> (Tensor, Tensor)");
  m.def(
      "avgpool_forward(Tensor R, Tensor a, Tensor z, int[2] kernel_size, int[2] stride, int[2] padding, "
      "bool ceil_mode, bool count_include_pad, int? divisor_override, float eps) -> Tensor");
  m.def(
      "avgpool_backward(Tensor G, Tensor R, Tensor a, Tensor z, int[2] kernel_size, int[2] stride, int[2] padding, "
      "bool ceil_mode, bool count_include_pad, int? divisor_override, float eps, bool compute_da) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("adaptive_avgpool_forward(Tensor R, Tensor a, Tensor z, float eps) -> Tensor");
  m.def(
      "adaptive_avgpool_backward(Tensor G, Tensor R, Tensor a, Tensor z, float eps, bool compute_da) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(isnet_kernels, CPU, m) {
  m.impl("stab_divide", &isnet_kernels::stab_divide);
  m.impl("mul_activation", &isnet_kernels::mul_activation);
  m.impl("epsilon_backward_input", &isnet_kernels::epsilon_backward_input);
  m.impl("epsilon_backward_stab", &isnet_kernels::epsilon_backward_stab);
  m.impl("residual_forward", &isnet_kernels::residual_forward);
  m.impl("residual_backward", &isnet_kernels::residual_backward);
  m.impl("maxpool_forward", &isnet_kernels::maxpool_forward);
  m.impl("maxpool_backward", &isnet_kernels::maxpool_backward);
  m.impl("avgpool_forward", &isnet_kernels::avgpool_forward);
  m.impl("avgpool_backward", &isnet_kernels::avgpool_backward);
  m.impl("adaptive_avgpool_forward", &isnet_kernels::adaptive_avgpool_forward);
  m.impl("adaptive_avgpool_backward", &isnet_kernels::adaptive_avgpool_backward);
}

static PyModuleDef isnet_kernels_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "CPU kernels of isnet_kernels, registered as torch.ops.isnet_kernels.* when this module is imported.\n"
    "CPU_CAPABILITY: the best kernel set this CPU runs ('avx2' or 'default').",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&isnet_kernels_module);
  if (module != nullptr && PyModule_AddStringConstant(module, "CPU_CAPABILITY", isnet_kernels::cpu_capability()) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
