// The entry points of the CUDA kernels (elementwise.cu, pool.cu): plain C++ functions taking device pointers,
// sizes, eps and a stream, so that the .cu files need nothing of torch and compile with nvcc alone. The binding
// (binding.cpp, built only against a CUDA build of torch) checks the arguments, allocates the outputs and calls
// these with the current stream. Semantics and argument order: the CPU kernels' (csrc/cpu/kernels.h), which are
// TorchPrimitives' (isnet_kernels/ops/primitives.py); the per-element maths is csrc/common/relevance_math.h.
//
// Every pointer is a contiguous device buffer of `dtype` (int64 for indices); outputs are written in full. Each
// function launches its kernels on `stream` and returns cudaGetLastError() (cudaSuccess when nothing failed).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/relevance_math.h"  // the elementwise ops
#include "../common/sizes.h"

namespace isnet_kernels {
namespace cuda {

// The element types: float, double, half (__half) and bfloat16 (__nv_bfloat16); half and bfloat16 compute in float.
enum class DType { kFloat, kDouble, kHalf, kBFloat16 };

// Device tables of an average pooling of (B, C, H, W) activations to (B, C, Ho, Wo), shared by M maps. Output
// (oh, ow) averages the inputs [h_start[oh], h_end[oh]) x [w_start[ow], w_end[ow]) with the weight
// weight[oh * Wo + ow] = 1 / divisor; input row i lies in the windows [h_lo[i], h_hi[i]) (columns likewise).
// The tables are csrc/cpu/kernels.h's PoolAxis and AvgPoolPlan, copied to the device by the binding.
struct AvgPoolTables {
  int64_t B, M, C, H, W, Ho, Wo;
  const int64_t *h_start, *h_end, *h_lo, *h_hi;
  const int64_t *w_start, *w_end, *w_lo, *w_hi;
  const double* weight;
};

// An elementwise op of csrc/common/relevance_math.h (Op: its struct, listed in ISNET_ELEMENTWISE_OPS): `in` its
// tensor arguments, maps (B, M, N) and activations (B, N), `out` its outputs, maps and sums over the M maps (B, N),
// each in schema order. Instantiated in elementwise.cu for every op of the list.
template <typename Op>
cudaError_t elementwise(DType dtype, const void* const* in, void* const* out, MapSizes n, double eps,
                        cudaStream_t stream);

// out[b, m, c, indices[b, c, l]] += R[b, m, c, l] * z / t, zero elsewhere: R (B, M, C, Lo) -> (B, M, C, length).
// Collisions (overlapping windows) add atomically, in float for half and bfloat16: `workspace` is a float buffer of
// out's size for those dtypes (unused, may be null, for float and double). Indices outside [0, length) are never
// dereferenced: their share is dropped (the binding documents that only the CPU raises for them).
cudaError_t maxpool_forward(DType dtype, const void* R, const void* z, const int64_t* indices, void* out,
                            float* workspace, PoolSizes p, double eps, cudaStream_t stream);

// g = G[b, m, c, indices[b, c, l]]; dR = g z / t (B, M, C, Lo); dz = sum_M g R eps sign(z) / t^2 (B, C, Lo).
cudaError_t maxpool_backward(DType dtype, const void* G, const void* R, const void* z, const int64_t* indices,
                             void* dR, void* dz, PoolSizes p, double eps, cudaStream_t stream);

// R_in = a * P^T (w R / t).  R (B, M, C, Ho, Wo); a (B, C, H, W); z (B, C, Ho, Wo); out (B, M, C, H, W).
cudaError_t avgpool_forward(DType dtype, const void* R, const void* a, const void* z, void* out,
                            const AvgPoolTables& p, double eps, cudaStream_t stream);

// V = P (G a); dR = V w / t (B, M, C, Ho, Wo); dz = -sum_M dR s (B, C, Ho, Wo); da = sum_M G P^T (w s)
// (B, C, H, W), skipped when `da` is null.
cudaError_t avgpool_backward(DType dtype, const void* G, const void* R, const void* a, const void* z, void* dR,
                             void* dz, void* da, const AvgPoolTables& p, double eps, cudaStream_t stream);

}  // namespace cuda
}  // namespace isnet_kernels
