// What the kernel translation units (kernels.cpp, kernels_avx2.cpp) and the operator one (isnet_kernels.cpp) share:
// sizes, block constants, and the declarations of the loop nests of kernels.inc, which are compiled once per
// instruction set: isnet_kernels::base for the compiler's baseline target (SSE2 on x86-64) and, with GCC on
// x86-64, isnet_kernels::avx2 for AVX2 + FMA + F16C. Light headers only: the kernels never see an at::Tensor.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/FunctionRef.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../common/relevance_math.h"  // the per-element maths, shared with the CUDA kernels
#include "../common/sizes.h"           // MapSizes, PoolSizes

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ISNET_KERNELS_AVX2 1
#else
#define ISNET_KERNELS_AVX2 0
#endif

// Before an inner loop whose output rows never overlap its input rows: vectorise without a runtime alias check.
#if defined(__clang__)
#define ISNET_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define ISNET_IVDEP _Pragma("GCC ivdep")
#else
#define ISNET_IVDEP
#endif

namespace isnet_kernels {

// Contiguous activation elements per task, for all M maps: the block's accumulators stay in L1.
constexpr int64_t kBlock = 512;

// Elements per parallel task below which threads cost more than they save (ATen's at::internal::GRAIN_SIZE).
constexpr int64_t kGrainSize = 32768;

// One axis of an average pooling (avg_pool2d or adaptive_avg_pool2d): output o averages the inputs
// [start[o], end[o]) (clipped to the input), and input i lies in the windows [lo[i], hi[i]) (a contiguous range,
// possibly empty: window starts and ends never decrease with o). The same as tables of fixed length for
// branch-free gathers: covering[d * in + i], d < ncover, is the d-th window covering input i or else `out`;
// members[d * out + o], d < nmember, the d-th input of window o or else `in` (the kernels keep a zero there).
struct PoolAxis {
  int64_t in = 0, out = 0;
  std::vector<int64_t> start, end, lo, hi;
  int64_t ncover = 0, nmember = 0;
  std::vector<int32_t> covering, members;
};

// The windows of an average pooling of (B, C, H, W) activations to (B, C, Ho, Wo), shared by M relevance maps:
// separable along H and W, with weight[oh * Wo + ow] = 1 / divisor of each window. `whole`: one window, the
// whole plane (global pooling).
struct AvgPoolPlan {
  int64_t B = 0, M = 0, C = 0;
  PoolAxis h, w;
  std::vector<double> weight;
  bool whole = false;
};

// at::parallel_for behind one non-template function (defined in isnet_kernels.cpp): its OpenMP region is compiled
// once, not once per kernel, dtype and instruction set, and the kernel files need no ATen/Parallel.h.
void parallel_for(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f);

// Raises for the first of `count` indices outside [0, length) (defined in isnet_kernels.cpp).
[[noreturn]] void bad_index(const char* op, const int64_t* indices, int64_t count, int64_t length);

// The loop nests of kernels.inc; arguments as the operators of isnet_kernels.cpp. elementwise_kernel<Op> runs an
// elementwise op of ../common/relevance_math.h: `in` its tensor arguments and `out` its outputs, in schema order.
#define ISNET_DECLARE_KERNELS                                                                                      \
  template <typename Op, typename scalar_t>                                                                        \
  void elementwise_kernel(const scalar_t* const* in, scalar_t* const* out, MapSizes n, double eps);                \
  template <typename scalar_t>                                                                                     \
  void maxpool_forward_kernel(const scalar_t* R, const scalar_t* z, const int64_t* indices, scalar_t* out,         \
                              PoolSizes p, double eps);                                                            \
  template <typename scalar_t>                                                                                     \
  void maxpool_backward_kernel(const scalar_t* G, const scalar_t* R, const scalar_t* z, const int64_t* indices,    \
                               scalar_t* dR, scalar_t* dz, PoolSizes p, double eps);                          \
  template <typename scalar_t>                                                                                     \
  void avgpool_forward_kernel(const scalar_t* R, const scalar_t* a, const scalar_t* z, scalar_t* out,              \
                              const AvgPoolPlan& p, double eps);                                                   \
  template <typename scalar_t>                                                                                     \
  void avgpool_backward_kernel(const scalar_t* G, const scalar_t* R, const scalar_t* a, const scalar_t* z,         \
                               scalar_t* dR, scalar_t* dz, scalar_t* da, const AvgPoolPlan& p, double eps);

// Explicit instantiations of every loop nest for element type T (in the kernel translation units).
#define ISNET_INSTANTIATE_KERNELS(T)                                                                               \
  template void maxpool_forward_kernel<T>(const T*, const T*, const int64_t*, T*, PoolSizes, double);              \
  template void maxpool_backward_kernel<T>(const T*, const T*, const T*, const int64_t*, T*, T*, PoolSizes, double); \
  template void avgpool_forward_kernel<T>(const T*, const T*, const T*, T*, const AvgPoolPlan&, double);           \
  template void avgpool_backward_kernel<T>(const T*, const T*, const T*, const T*, T*, T*, T*, const AvgPoolPlan&, \
                                           double);

// The generic elementwise loop for one op of math::ISNET_ELEMENTWISE_OPS, in every dtype.
#define ISNET_INSTANTIATE_ELEMENTWISE(Op)                                                                          \
  template void elementwise_kernel<math::Op, float>(const float* const*, float* const*, MapSizes, double);          \
  template void elementwise_kernel<math::Op, double>(const double* const*, double* const*, MapSizes, double);       \
  template void elementwise_kernel<math::Op, c10::Half>(const c10::Half* const*, c10::Half* const*, MapSizes,       \
                                                        double);                                                   \
  template void elementwise_kernel<math::Op, c10::BFloat16>(const c10::BFloat16* const*, c10::BFloat16* const*,    \
                                                            MapSizes, double);

#define ISNET_INSTANTIATE_ALL_KERNELS                   \
  ISNET_ELEMENTWISE_OPS(ISNET_INSTANTIATE_ELEMENTWISE)  \
  ISNET_INSTANTIATE_KERNELS(float)                      \
  ISNET_INSTANTIATE_KERNELS(double)                     \
  ISNET_INSTANTIATE_KERNELS(c10::Half)                  \
  ISNET_INSTANTIATE_KERNELS(c10::BFloat16)

namespace base {
ISNET_DECLARE_KERNELS
}  // namespace base

#if ISNET_KERNELS_AVX2
namespace avx2 {
ISNET_DECLARE_KERNELS
}  // namespace avx2
#endif

}  // namespace isnet_kernels
