// isnet_kernels._C: CPU kernels of the elementwise relevance primitives (docs/kernels.md), registered with PyTorch's
// dispatcher as torch.ops.isnet_kernels.*. Semantics and argument order are TorchPrimitives'
// (isnet_kernels/ops/primitives.py); isnet_kernels/backends/cpp.py registers the fake (meta) kernels and wraps them.
//
// The Python module has no functions: importing it loads this library, whose static initialisers register the
// schemas (TORCH_LIBRARY) and the CPU kernels (TORCH_LIBRARY_IMPL). Each operator below checks its arguments,
// allocates its outputs (NaN-filled when ISNET_KERNELS_POISON=1) and runs one fused loop nest of kernels.inc for
// its dtype (float, double, half, bfloat16) and the best instruction set this CPU has. The elementwise operators are
// one boxed kernel, elementwise_operator<Op>, registered with its schema for every op of ISNET_ELEMENTWISE_OPS
// (../common/relevance_math.h); the pooling operators are written out below.
//
// Build time: torch's headers cost about ten seconds per translation unit, so only this file includes the heavy
// ones (torch/library.h, at::Tensor); the loop nests compile in kernels.cpp and kernels_avx2.cpp against light
// headers, in parallel with this one when ninja is present.
#include <Python.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
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

// ---- the elementwise ops (../common/relevance_math.h) -----------------------------------------------------

// The CPU operator of an elementwise op, a boxed kernel: its arguments checked and outputs allocated by
// elementwise_call, then elementwise_kernel<Op> of kernels.inc for the dtype and the best instruction set.
template <typename Op>
void elementwise_operator(const c10::OperatorHandle& handle, torch::jit::Stack* stack) {
  using A = math::Arity<Op>;
  ElementwiseCall<Op> call = elementwise_call<Op>(
      handle, stack, [](const char* op, const char* name, const at::Tensor& t, const at::Tensor& first) {
        check_tensor(op, name, t, first.scalar_type());
      });
  // (check_tensor has accepted the dtype: the dispatch's own message, which needs a constant name, cannot show)
  ISNET_DISPATCH(call.in[0].scalar_type(), "isnet_kernels elementwise operator", [&] {
    std::array<const scalar_t*, A::kIn> in;
    std::array<scalar_t*, A::kOut> out;
    for (int i = 0; i < A::kIn; ++i) {
      in[i] = call.in[i].template const_data_ptr<scalar_t>();
    }
    for (int i = 0; i < A::kOut; ++i) {
      out[i] = call.out[i].template mutable_data_ptr<scalar_t>();
    }
#if ISNET_KERNELS_AVX2
    if (use_avx2()) {
      avx2::elementwise_kernel<Op, scalar_t>(in.data(), out.data(), call.n, call.eps);
      return;
    }
#endif
    base::elementwise_kernel<Op, scalar_t>(in.data(), out.data(), call.n, call.eps);
  });
  push_outputs(call, stack);
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

// An elementwise op's schema (its struct's kSchema), and its CPU operator.
#define ISNET_DEFINE_ELEMENTWISE(Op) m.def(isnet_kernels::math::Op::kSchema);
#define ISNET_IMPL_ELEMENTWISE(Op)                                           \
  m.impl(isnet_kernels::op_name<isnet_kernels::math::Op>().c_str(),         \
         torch::CppFunction::makeFromBoxedFunction<                         \
             &isnet_kernels::elementwise_operator<isnet_kernels::math::Op>>());

TORCH_LIBRARY(isnet_kernels, m) {
  ISNET_ELEMENTWISE_OPS(ISNET_DEFINE_ELEMENTWISE)
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
  ISNET_ELEMENTWISE_OPS(ISNET_IMPL_ELEMENTWISE)
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
