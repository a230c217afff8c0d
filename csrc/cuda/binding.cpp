// isnet_kernels._C_cuda: the CUDA kernels of csrc/cuda registered with PyTorch's dispatcher for the CUDA key of the
// operators isnet_kernels._C defines (csrc/cpu/isnet_kernels.cpp), so one torch.ops.isnet_kernels.* call serves
// CPU and CUDA tensors. Compiled only against a CUDA build of torch (setup.py); the kernels themselves (*.cu) take
// plain pointers and compile with nvcc alone.
//
// Each operator checks its arguments with the CPU operators' code (../common/operator_checks.h) plus "all on one
// CUDA device", allocates its outputs (NaN-filled when ISNET_KERNELS_POISON=1), makes that device current (a
// device guard) and launches on the current stream. Max-pool indices outside [0, length) raise on the CPU; on the
// GPU the kernels never dereference them (their share is dropped), since checking them would need a device sync.
#include <Python.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "../common/operator_checks.h"
#include "kernels.h"

namespace isnet_kernels {
namespace {

constexpr c10::DeviceType kCUDA = c10::DeviceType::CUDA;

// A contiguous floating CUDA tensor of the first argument's dtype, on the first argument's device.
void check_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& first) {
  ::isnet_kernels::check_tensor(kCUDA, op, name, t, first.scalar_type());
  TORCH_CHECK(t.device() == first.device(), "isnet_kernels::", op, ": ", name, " must be on ", first.device(),
              " (the device of the first argument), got ", t.device());
}

cuda::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return cuda::DType::kFloat;
    case at::kDouble:
      return cuda::DType::kDouble;
    case at::kHalf:
      return cuda::DType::kHalf;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "isnet_kernels: CUDA kernels take float, double, half or bfloat16, got ", t);
  }
}

cudaStream_t stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

// ---- the elementwise ops (../common/relevance_math.h) -----------------------------------------------------

// The CUDA operator of an elementwise op, a boxed kernel: its arguments checked and outputs allocated by
// elementwise_call (the CPU operator's checks, plus one device), then cuda::elementwise<Op> on the current stream.
template <typename Op>
void elementwise_operator(const c10::OperatorHandle& handle, torch::jit::Stack* stack) {
  using A = math::Arity<Op>;
  ElementwiseCall<Op> call = elementwise_call<Op>(
      handle, stack, [](const char* op, const char* name, const at::Tensor& t, const at::Tensor& first) {
        check_tensor(op, name, t, first);
      });
  const c10::cuda::CUDAGuard guard(call.in[0].device());
  std::array<const void*, A::kIn> in;
  std::array<void*, A::kOut> out;
  for (int i = 0; i < A::kIn; ++i) {
    in[i] = call.in[i].const_data_ptr();
  }
  for (int i = 0; i < A::kOut; ++i) {
    out[i] = call.out[i].mutable_data_ptr();
  }
  C10_CUDA_CHECK(
      cuda::elementwise<Op>(dtype_of(call.in[0].scalar_type()), in.data(), out.data(), call.n, call.eps, stream()));
  push_outputs(call, stack);
}

// ---- max-pool, winner-take-all ----------------------------------------------------------------------------

at::Tensor maxpool_forward(const at::Tensor& R, const at::Tensor& z, const at::Tensor& indices, int64_t length,
                           double eps) {
  constexpr const char* op = "maxpool_forward";
  check_tensor(op, "R", R, R);
  check_tensor(op, "z", z, R);
  PoolSizes p = check_pool(kCUDA, op, R, z, indices);
  TORCH_CHECK(indices.device() == R.device(), "isnet_kernels::", op, ": indices must be on ", R.device(), ", got ",
              indices.device());
  TORCH_CHECK(length >= 0, "isnet_kernels::", op, ": length must be >= 0, got ", length);
  p.length = length;
  const c10::cuda::CUDAGuard guard(R.device());
  at::Tensor out = new_output({p.B, p.M, p.C, length}, R, poisoning());
  const bool low = R.scalar_type() == at::kHalf || R.scalar_type() == at::kBFloat16;
  at::Tensor workspace = low ? R.new_empty({p.B, p.M, p.C, length}, R.options().dtype(at::kFloat)) : at::Tensor();
  C10_CUDA_CHECK(cuda::maxpool_forward(dtype_of(R.scalar_type()), R.const_data_ptr(), z.const_data_ptr(),
                                       indices.const_data_ptr<int64_t>(), out.mutable_data_ptr(),
                                       low ? workspace.mutable_data_ptr<float>() : nullptr, p, eps, stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> maxpool_backward(const at::Tensor& G, const at::Tensor& R, const at::Tensor& z,
                                                    const at::Tensor& indices, double eps) {
  constexpr const char* op = "maxpool_backward";
  check_tensor(op, "G", G, G);
  check_tensor(op, "R", R, G);
  check_tensor(op, "z", z, G);
  PoolSizes p = check_pool(kCUDA, op, R, z, indices);
  TORCH_CHECK(indices.device() == G.device(), "isnet_kernels::", op, ": indices must be on ", G.device(), ", got ",
              indices.device());
  TORCH_CHECK(G.dim() == 4 && G.size(0) == p.B && G.size(1) == p.M && G.size(2) == p.C, "isnet_kernels::", op,
              ": G must have shape (B, M, C, length) = [", p.B, ", ", p.M, ", ", p.C, ", length] to match R of shape ",
              R.sizes(), ", got ", G.sizes());
  p.length = G.size(3);
  const c10::cuda::CUDAGuard guard(G.device());
  const bool poison = poisoning();
  at::Tensor dR = new_output(R.sizes(), R, poison);
  at::Tensor dz = new_output(z.sizes(), z, poison);
  C10_CUDA_CHECK(cuda::maxpool_backward(dtype_of(G.scalar_type()), G.const_data_ptr(), R.const_data_ptr(),
                                        z.const_data_ptr(), indices.const_data_ptr<int64_t>(), dR.mutable_data_ptr(),
                                        dz.mutable_data_ptr(), p, eps, stream()));
  return {dR, dz};
}

// ---- average pooling (avg_pool2d, adaptive_avg_pool2d), epsilon ------------------------------------------

// The plan's window tables on `device`, and the kernels' view of them. The tables are staged in pinned host memory
// and copied without blocking the host (torch's pinned allocator keeps the staging buffer until the copy is done);
// `storage` keeps the device buffers alive until the kernels that read them have run (the caching allocator reuses
// them only for later work on the stream).
struct DeviceTables {
  at::Tensor storage, weight;
  cuda::AvgPoolTables view;
};

DeviceTables device_tables(const AvgPoolPlan& plan, const at::Device& device) {
  const std::vector<int64_t>* parts[] = {&plan.h.start, &plan.h.end, &plan.h.lo, &plan.h.hi,
                                         &plan.w.start, &plan.w.end, &plan.w.lo, &plan.w.hi};
  int64_t total = 0;
  for (const auto* part : parts) {
    total += static_cast<int64_t>(part->size());
  }
  const auto pinned = [](at::ScalarType dtype) { return at::TensorOptions().dtype(dtype).pinned_memory(true); };
  at::Tensor host = at::empty({std::max<int64_t>(total, 1)}, pinned(at::kLong));
  int64_t* dst = host.mutable_data_ptr<int64_t>();
  std::vector<int64_t> offsets;
  for (const auto* part : parts) {
    offsets.push_back(dst - host.mutable_data_ptr<int64_t>());
    std::memcpy(dst, part->data(), part->size() * sizeof(int64_t));
    dst += part->size();
  }
  at::Tensor weight_host = at::empty({std::max<int64_t>(static_cast<int64_t>(plan.weight.size()), 1)},
                                     pinned(at::kDouble));
  std::memcpy(weight_host.mutable_data_ptr<double>(), plan.weight.data(), plan.weight.size() * sizeof(double));
  DeviceTables tables{host.to(device, /*non_blocking=*/true), weight_host.to(device, /*non_blocking=*/true), {}};
  const int64_t* base = tables.storage.const_data_ptr<int64_t>();
  tables.view = {plan.B,           plan.M,           plan.C,           plan.h.in,        plan.w.in,
                 plan.h.out,       plan.w.out,       base + offsets[0], base + offsets[1], base + offsets[2],
                 base + offsets[3], base + offsets[4], base + offsets[5], base + offsets[6], base + offsets[7],
                 tables.weight.const_data_ptr<double>()};
  return tables;
}

// The same-device checks the shared plan checks lack (they check each tensor is a CUDA tensor of G's or R's dtype).
void check_avgpool_devices(const char* op, const at::Tensor* G, const at::Tensor& R, const at::Tensor& a,
                           const at::Tensor& z) {
  const at::Tensor& first = G != nullptr ? *G : R;
  check_tensor(op, "R", R, first);
  check_tensor(op, "a", a, first);
  check_tensor(op, "z", z, first);
}

at::Tensor avgpool_forward_impl(const at::Tensor& R, const at::Tensor& a, const at::Tensor& z,
                                const AvgPoolPlan& plan, double eps) {
  const c10::cuda::CUDAGuard guard(R.device());
  at::Tensor out = new_output({plan.B, plan.M, plan.C, a.size(2), a.size(3)}, R, poisoning());
  const DeviceTables tables = device_tables(plan, R.device());
  C10_CUDA_CHECK(cuda::avgpool_forward(dtype_of(R.scalar_type()), R.const_data_ptr(), a.const_data_ptr(),
                                       z.const_data_ptr(), out.mutable_data_ptr(), tables.view, eps, stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> avgpool_backward_impl(const at::Tensor& G, const at::Tensor& R,
                                                                     const at::Tensor& a, const at::Tensor& z,
                                                                     const AvgPoolPlan& plan, double eps,
                                                                     bool compute_da) {
  const c10::cuda::CUDAGuard guard(G.device());
  const bool poison = poisoning();
  at::Tensor dR = new_output(R.sizes(), R, poison);
  at::Tensor dz = new_output(z.sizes(), z, poison);
  at::Tensor da = compute_da ? new_output(a.sizes(), a, poison) : a.new_empty({0});
  const DeviceTables tables = device_tables(plan, G.device());
  C10_CUDA_CHECK(cuda::avgpool_backward(dtype_of(G.scalar_type()), G.const_data_ptr(), R.const_data_ptr(),
                                        a.const_data_ptr(), z.const_data_ptr(), dR.mutable_data_ptr(),
                                        dz.mutable_data_ptr(), compute_da ? da.mutable_data_ptr() : nullptr,
                                        tables.view, eps, stream()));
  return {dR, dz, da};
}

at::Tensor avgpool_forward(const at::Tensor& R, const at::Tensor& a, const at::Tensor& z, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override, double eps) {
  constexpr const char* op = "avgpool_forward";
  const AvgPoolPlan plan = avgpool_plan(kCUDA, op, nullptr, R, a, z, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, divisor_override);
  check_avgpool_devices(op, nullptr, R, a, z);
  return avgpool_forward_impl(R, a, z, plan, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> avgpool_backward(
    const at::Tensor& G, const at::Tensor& R, const at::Tensor& a, const at::Tensor& z, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
    std::optional<int64_t> divisor_override, double eps, bool compute_da) {
  constexpr const char* op = "avgpool_backward";
  const AvgPoolPlan plan = avgpool_plan(kCUDA, op, &G, R, a, z, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, divisor_override);
  check_avgpool_devices(op, &G, R, a, z);
  return avgpool_backward_impl(G, R, a, z, plan, eps, compute_da);
}

at::Tensor adaptive_avgpool_forward(const at::Tensor& R, const at::Tensor& a, const at::Tensor& z, double eps) {
  constexpr const char* op = "adaptive_avgpool_forward";
  const AvgPoolPlan plan = adaptive_avgpool_plan(kCUDA, op, nullptr, R, a, z);
  check_avgpool_devices(op, nullptr, R, a, z);
  return avgpool_forward_impl(R, a, z, plan, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_avgpool_backward(const at::Tensor& G, const at::Tensor& R,
                                                                         const at::Tensor& a, const at::Tensor& z,
                                                                         double eps, bool compute_da) {
  constexpr const char* op = "adaptive_avgpool_backward";
  const AvgPoolPlan plan = adaptive_avgpool_plan(kCUDA, op, &G, R, a, z);
  check_avgpool_devices(op, &G, R, a, z);
  return avgpool_backward_impl(G, R, a, z, plan, eps, compute_da);
}

}  // namespace
}  // namespace isnet_kernels

// The schemas are isnet_kernels._C's (TORCH_LIBRARY in csrc/cpu/isnet_kernels.cpp); isnet_kernels.backends.cuda
// imports that library first.
// An elementwise op's CUDA operator.
#define ISNET_IMPL_ELEMENTWISE(Op)                                           \
  m.impl(isnet_kernels::op_name<isnet_kernels::math::Op>().c_str(),         \
         torch::CppFunction::makeFromBoxedFunction<                         \
             &isnet_kernels::elementwise_operator<isnet_kernels::math::Op>>());

TORCH_LIBRARY_IMPL(isnet_kernels, CUDA, m) {
  ISNET_ELEMENTWISE_OPS(ISNET_IMPL_ELEMENTWISE)
  m.impl("maxpool_forward", &isnet_kernels::maxpool_forward);
  m.impl("maxpool_backward", &isnet_kernels::maxpool_backward);
  m.impl("avgpool_forward", &isnet_kernels::avgpool_forward);
  m.impl("avgpool_backward", &isnet_kernels::avgpool_backward);
  m.impl("adaptive_avgpool_forward", &isnet_kernels::adaptive_avgpool_forward);
  m.impl("adaptive_avgpool_backward", &isnet_kernels::adaptive_avgpool_backward);
}

static PyModuleDef isnet_kernels_cuda_module = {
    PyModuleDef_HEAD_INIT,
    "_C_cuda",
    "CUDA kernels of isnet_kernels, registered for CUDA tensors under torch.ops.isnet_kernels.* when this module is "
    "imported (after isnet_kernels._C, which defines the operators).",
    -1,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

PyMODINIT_FUNC PyInit__C_cuda(void) {
  return PyModule_Create(&isnet_kernels_cuda_module);
}
