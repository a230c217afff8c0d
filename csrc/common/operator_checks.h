// The operators' argument checks, output buffers and average-pooling plans, shared by the CPU operators
// (csrc/cpu/isnet_kernels.cpp) and the CUDA ones (csrc/cuda/binding.cpp): both devices check their arguments with
// the same code and the same messages. Needs torch's headers (at::Tensor): only those two translation units
// include it, never a kernel file.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../cpu/kernels.h"  // MapSizes, PoolSizes, PoolAxis, AvgPoolPlan, and the elementwise ops (relevance_math.h)

namespace isnet_kernels {

// Whether outputs are NaN-filled before kernels write them (ISNET_KERNELS_POISON=1, for tests).
inline bool poisoning() {
  const char* value = std::getenv("ISNET_KERNELS_POISON");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

// An output buffer shaped `sizes` with `like`'s dtype and device: uninitialised, or NaN-filled when poisoning.
// (Tensor::new_empty rather than at::empty: <ATen/ops/empty.h> alone costs seconds of compile time.)
inline at::Tensor new_output(at::IntArrayRef sizes, const at::Tensor& like, bool poison) {
  at::Tensor out = like.new_empty(sizes);
  if (poison) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

// A contiguous floating tensor on a `device` (CPU or CUDA) device, of `dtype` (the first tensor argument's).
inline void check_tensor(c10::DeviceType device, const char* op, const char* name, const at::Tensor& t,
                         at::ScalarType dtype) {
  TORCH_CHECK(t.defined(), "isnet_kernels::", op, ": ", name, " is undefined");
  TORCH_CHECK(t.device().type() == device, "isnet_kernels::", op, ": ", name, " must be a ",
              device == c10::DeviceType::CPU ? "CPU" : "CUDA", " tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "isnet_kernels::", op, ": ", name, " must have dtype ", dtype,
              " (the dtype of the first argument), got ", t.scalar_type());
  TORCH_CHECK(at::isFloatingType(dtype), "isnet_kernels::", op, ": ", name,
              " must be float, double, half or bfloat16, got ", dtype);
  TORCH_CHECK(t.is_contiguous(), "isnet_kernels::", op, ": ", name, " must be contiguous (call .contiguous())");
}

// The flattened sizes of a (map, activation) pair: map (B, M, *S), activation (B, *S).
inline MapSizes check_map_activation(const char* op, const char* map_name, const at::Tensor& map,
                                     const char* act_name, const at::Tensor& act) {
  TORCH_CHECK(map.dim() >= 2, "isnet_kernels::", op, ": ", map_name, " must have shape (B, M, *S), got ",
              map.sizes());
  c10::DimVector expected{map.size(0)};
  expected.append(map.sizes().begin() + 2, map.sizes().end());
  TORCH_CHECK(act.sizes() == at::IntArrayRef(expected), "isnet_kernels::", op, ": ", act_name,
              " must have shape (B, *S) = ", at::IntArrayRef(expected), " to match ", map_name,
              " of shape (B, M, *S) = ", map.sizes(), ", got ", act.sizes());
  return {map.size(0), map.size(1), c10::multiply_integers(map.sizes().slice(2))};
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "isnet_kernels::", op, ": ", name, " must have the shape of ", ref_name,
              ", ", ref.sizes(), ", got ", t.sizes());
}

// Max-pool arguments R (B, M, C, Lo), z and indices (B, C, Lo); PoolSizes::length is left to the caller.
inline PoolSizes check_pool(c10::DeviceType device, const char* op, const at::Tensor& R, const at::Tensor& z,
                            const at::Tensor& indices) {
  check_tensor(device, op, "R", R, R.scalar_type());
  check_tensor(device, op, "z", z, R.scalar_type());
  TORCH_CHECK(indices.defined() && indices.device().type() == device && indices.scalar_type() == at::kLong &&
                  indices.is_contiguous(),
              "isnet_kernels::", op, ": indices must be a contiguous int64 ",
              device == c10::DeviceType::CPU ? "CPU" : "CUDA", " tensor (max_pool's return_indices), got ",
              indices.defined() ? c10::toString(indices.scalar_type()) : "undefined",
              indices.defined() && !indices.is_contiguous() ? " (not contiguous)" : "");
  TORCH_CHECK(R.dim() == 4, "isnet_kernels::", op, ": R must have shape (B, M, C, Lo), got ", R.sizes());
  const int64_t B = R.size(0), M = R.size(1), C = R.size(2), Lo = R.size(3);
  TORCH_CHECK(z.dim() == 3 && z.size(0) == B && z.size(1) == C && z.size(2) == Lo, "isnet_kernels::", op,
              ": z must have shape (B, C, Lo) = [", B, ", ", C, ", ", Lo, "] to match R of shape ", R.sizes(),
              ", got ", z.sizes());
  check_same_shape(op, "indices", indices, "z", z);
  return {B, M, C, Lo, 0};
}

// ---- average pooling (avg_pool2d, adaptive_avg_pool2d): the plan of the windows -------------------------

// lo[i], hi[i]: the windows [lo, hi) covering input i, from the windows' (non-decreasing) starts and ends; and
// the padded tables `covering` and `members`.
inline void cover(PoolAxis& axis) {
  TORCH_CHECK(axis.in < std::numeric_limits<int32_t>::max() && axis.out < std::numeric_limits<int32_t>::max(),
              "isnet_kernels: average pooling planes must have fewer than 2^31 - 1 rows and columns");
  axis.lo.assign(axis.in, 0);
  axis.hi.assign(axis.in, 0);
  int64_t first = 0, past = 0;  // first window ending after i; first window starting after i
  for (int64_t i = 0; i < axis.in; ++i) {
    while (first < axis.out && axis.end[first] <= i) {
      ++first;
    }
    while (past < axis.out && axis.start[past] <= i) {
      ++past;
    }
    axis.lo[i] = first;
    axis.hi[i] = std::max(first, past);
    axis.ncover = std::max(axis.ncover, axis.hi[i] - axis.lo[i]);
  }
  axis.covering.assign(axis.ncover * axis.in, static_cast<int32_t>(axis.out));
  for (int64_t i = 0; i < axis.in; ++i) {
    for (int64_t o = axis.lo[i]; o < axis.hi[i]; ++o) {
      axis.covering[(o - axis.lo[i]) * axis.in + i] = static_cast<int32_t>(o);
    }
  }
  for (int64_t o = 0; o < axis.out; ++o) {
    axis.nmember = std::max(axis.nmember, axis.end[o] - axis.start[o]);
  }
  axis.members.assign(axis.nmember * axis.out, static_cast<int32_t>(axis.in));
  for (int64_t o = 0; o < axis.out; ++o) {
    for (int64_t i = axis.start[o]; i < axis.end[o]; ++i) {
      axis.members[(i - axis.start[o]) * axis.out + o] = static_cast<int32_t>(i);
    }
  }
}

// avg_pool2d's output size along one axis (ATen's pooling_output_shape, dilation 1): floor or ceil, and with
// ceil_mode no window that starts in the right padding.
inline int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, bool ceil_mode) {
  const int64_t numerator = in + 2 * pad - kernel + (ceil_mode ? stride - 1 : 0);
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) {
    --out;
  }
  return out;
}

// One axis of avg_pool2d, as ATen's kernels compute it; `divisor` gets each window's factor of the divisor (its
// size with the padding when count_include_pad, else without).
inline PoolAxis avg_axis(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, bool count_include_pad,
                  std::vector<int64_t>& divisor) {
  PoolAxis axis;
  axis.in = in;
  axis.out = out;
  axis.start.resize(out);
  axis.end.resize(out);
  divisor.resize(out);
  for (int64_t o = 0; o < out; ++o) {
    const int64_t start = o * stride - pad;
    const int64_t end = std::min(start + kernel, in + pad);
    axis.start[o] = std::max<int64_t>(start, 0);
    axis.end[o] = std::min(end, in);
    divisor[o] = count_include_pad ? end - start : axis.end[o] - axis.start[o];
  }
  cover(axis);
  return axis;
}

// One axis of adaptive_avg_pool2d: window o is [floor(o * in / out), ceil((o + 1) * in / out)).
inline PoolAxis adaptive_axis(int64_t in, int64_t out, std::vector<int64_t>& divisor) {
  PoolAxis axis;
  axis.in = in;
  axis.out = out;
  axis.start.resize(out);
  axis.end.resize(out);
  divisor.resize(out);
  for (int64_t o = 0; o < out; ++o) {
    axis.start[o] = (o / out) * in + ((o % out) * in) / out;
    axis.end[o] = 1 + ((o + 1) * in - 1) / out;
    divisor[o] = axis.end[o] - axis.start[o];
  }
  cover(axis);
  return axis;
}

// weight[oh * Wo + ow] = 1 / divisor: the product of the axes' factors, or divisor_override.
inline void set_weights(AvgPoolPlan& plan, const std::vector<int64_t>& dh, const std::vector<int64_t>& dw,
                 std::optional<int64_t> divisor_override) {
  plan.weight.resize(plan.h.out * plan.w.out);
  for (int64_t oh = 0; oh < plan.h.out; ++oh) {
    for (int64_t ow = 0; ow < plan.w.out; ++ow) {
      const int64_t divisor = divisor_override.has_value() ? *divisor_override : dh[oh] * dw[ow];
      plan.weight[oh * plan.w.out + ow] = 1.0 / static_cast<double>(divisor);
    }
  }
  plan.whole = plan.h.out == 1 && plan.w.out == 1 && plan.h.start[0] == 0 && plan.h.end[0] == plan.h.in &&
               plan.w.start[0] == 0 && plan.w.end[0] == plan.w.in;
}

// Checks R (B, M, C, Ho, Wo), a (B, C, H, W) and z (B, C, Ho, Wo); G, when given, must be (B, M, C, H, W).
inline AvgPoolPlan check_avgpool(c10::DeviceType device, const char* op, const at::Tensor* G, const at::Tensor& R,
                                 const at::Tensor& a, const at::Tensor& z) {
  const at::Tensor& first = G != nullptr ? *G : R;
  if (G != nullptr) {
    check_tensor(device, op, "G", *G, first.scalar_type());
  }
  check_tensor(device, op, "R", R, first.scalar_type());
  check_tensor(device, op, "a", a, first.scalar_type());
  check_tensor(device, op, "z", z, first.scalar_type());
  TORCH_CHECK(R.dim() == 5, "isnet_kernels::", op, ": R must have shape (B, M, C, Ho, Wo), got ", R.sizes());
  AvgPoolPlan plan;
  plan.B = R.size(0);
  plan.M = R.size(1);
  plan.C = R.size(2);
  TORCH_CHECK(a.dim() == 4 && a.size(0) == plan.B && a.size(1) == plan.C, "isnet_kernels::", op,
              ": a must have shape (B, C, H, W) with (B, C) = (", plan.B, ", ", plan.C, ") to match R of shape ",
              R.sizes(), ", got ", a.sizes());
  TORCH_CHECK(a.size(2) > 0 && a.size(3) > 0, "isnet_kernels::", op, ": a must have non-empty planes, got ",
              a.sizes());
  TORCH_CHECK(z.dim() == 4 && z.size(0) == plan.B && z.size(1) == plan.C && z.size(2) == R.size(3) &&
                  z.size(3) == R.size(4),
              "isnet_kernels::", op, ": z must have shape (B, C, Ho, Wo) = [", plan.B, ", ", plan.C, ", ", R.size(3),
              ", ", R.size(4), "] to match R of shape ", R.sizes(), ", got ", z.sizes());
  if (G != nullptr) {
    TORCH_CHECK(G->dim() == 5 && G->size(0) == plan.B && G->size(1) == plan.M && G->size(2) == plan.C &&
                    G->size(3) == a.size(2) && G->size(4) == a.size(3),
                "isnet_kernels::", op, ": G must have shape (B, M, C, H, W) = [", plan.B, ", ", plan.M, ", ", plan.C,
                ", ", a.size(2), ", ", a.size(3), "] to match R and a, got ", G->sizes());
  }
  return plan;
}

// The plan of avg_pool2d(a, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), after
// checking its arguments as ATen does and that z has its output size.
inline AvgPoolPlan avgpool_plan(c10::DeviceType device, const char* op, const at::Tensor* G, const at::Tensor& R,
                                const at::Tensor& a, const at::Tensor& z, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                std::optional<int64_t> divisor_override) {
  AvgPoolPlan plan = check_avgpool(device, op, G, R, a, z);
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2, "isnet_kernels::", op,
              ": kernel_size, stride and padding must have two elements each, got ", kernel_size, ", ", stride,
              " and ", padding);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(kernel_size[d] > 0 && stride[d] > 0 && padding[d] >= 0 && padding[d] <= kernel_size[d] / 2,
                "isnet_kernels::", op, ": expected kernel_size > 0, stride > 0 and 0 <= padding <= kernel_size / 2, "
                "got kernel_size ", kernel_size, ", stride ", stride, ", padding ", padding);
  }
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, "isnet_kernels::", op,
              ": divisor_override must be non-zero");
  const int64_t H = a.size(2), W = a.size(3);
  const int64_t Ho = pooled_size(H, kernel_size[0], stride[0], padding[0], ceil_mode);
  const int64_t Wo = pooled_size(W, kernel_size[1], stride[1], padding[1], ceil_mode);
  TORCH_CHECK(z.size(2) == Ho && z.size(3) == Wo, "isnet_kernels::", op, ": z must have avg_pool2d's output size [",
              Ho, ", ", Wo, "] for an input of size [", H, ", ", W, "] and these parameters, got ", z.sizes());
  std::vector<int64_t> dh, dw;
  plan.h = avg_axis(H, Ho, kernel_size[0], stride[0], padding[0], count_include_pad, dh);
  plan.w = avg_axis(W, Wo, kernel_size[1], stride[1], padding[1], count_include_pad, dw);
  set_weights(plan, dh, dw, divisor_override);
  return plan;
}

// The plan of adaptive_avg_pool2d(a, z's size). A global pool (output 1 x 1) runs as one row of H * W elements.
inline AvgPoolPlan adaptive_avgpool_plan(c10::DeviceType device, const char* op, const at::Tensor* G,
                                         const at::Tensor& R, const at::Tensor& a, const at::Tensor& z) {
  AvgPoolPlan plan = check_avgpool(device, op, G, R, a, z);
  int64_t H = a.size(2), W = a.size(3);
  const int64_t Ho = z.size(2), Wo = z.size(3);
  TORCH_CHECK(Ho > 0 && Wo > 0, "isnet_kernels::", op, ": z must have a non-empty output size, got ", z.sizes());
  if (Ho == 1 && Wo == 1) {
    W *= H;
    H = 1;
  }
  std::vector<int64_t> dh, dw;
  plan.h = adaptive_axis(H, Ho, dh);
  plan.w = adaptive_axis(W, Wo, dw);
  set_weights(plan, dh, dw, std::nullopt);
  return plan;
}

// ---- the elementwise ops (math::ISNET_ELEMENTWISE_OPS) -------------------------------------------------------

// The operator's name, "stab_divide", from Op::kSchema.
template <typename Op>
const std::string& op_name() {
  static const std::string name(Op::kSchema, std::strchr(Op::kSchema, '('));
  return name;
}

// One call of an elementwise op: its tensor arguments and eps (0 when it takes none), the flattened sizes, and its
// outputs, each in schema order.
template <typename Op>
struct ElementwiseCall {
  const char* op = nullptr;
  std::array<at::Tensor, math::Arity<Op>::kIn> in;
  std::array<at::Tensor, math::Arity<Op>::kOut> out;
  MapSizes n;
  double eps = 0.0;
};

// Takes an elementwise op's arguments off the dispatcher's stack (a boxed kernel's), checks them and allocates its
// outputs (NaN-filled when poisoning). `check(op, name, tensor, first)` checks each tensor argument against the
// first one (device and dtype); then the map Op::kShapeOf against the first activation (check_map_activation), the
// other maps against it and the other activations against the first one (check_same_shape). Maps out have the maps'
// shape, sums over M the activations'.
template <typename Op, typename Check>
ElementwiseCall<Op> elementwise_call(const c10::OperatorHandle& handle, torch::jit::Stack* stack, const Check& check) {
  using A = math::Arity<Op>;
  const std::vector<c10::Argument>& arguments = handle.schema().arguments();
  ElementwiseCall<Op> call;
  call.op = op_name<Op>().c_str();
  {
    auto args = torch::jit::last(*stack, arguments.size());
    for (int i = 0; i < A::kIn; ++i) {
      call.in[i] = args[i].toTensor();
    }
    if (arguments.size() > static_cast<size_t>(A::kIn)) {
      call.eps = args[A::kIn].toDouble();
    }
  }
  torch::jit::drop(*stack, arguments.size());
  const auto name = [&](int i) { return arguments[i].name().c_str(); };
  for (int i = 0; i < A::kIn; ++i) {
    check(call.op, name(i), call.in[i], call.in[0]);
  }
  constexpr int map = Op::kShapeOf;
  constexpr int act = math::index_of(Op::kInputs, 'a', 0);
  call.n = check_map_activation(call.op, name(map), call.in[map], name(act), call.in[act]);
  for (int i = 0; i < A::kIn; ++i) {
    if (i != map && i != act) {
      const int ref = Op::kInputs[i] == 'm' ? map : act;
      check_same_shape(call.op, name(i), call.in[i], name(ref), call.in[ref]);
    }
  }
  const bool poison = poisoning();
  for (int i = 0; i < A::kOut; ++i) {
    const at::Tensor& like = call.in[Op::kOutputs[i] == 'm' ? map : act];
    call.out[i] = new_output(like.sizes(), like, poison);
  }
  return call;
}

// Pushes a call's outputs onto the dispatcher's stack.
template <typename Op>
void push_outputs(ElementwiseCall<Op>& call, torch::jit::Stack* stack) {
  for (at::Tensor& t : call.out) {
    torch::jit::push(*stack, std::move(t));
  }
}

}  // namespace isnet_kernels
