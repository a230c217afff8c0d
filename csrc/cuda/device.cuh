// What the CUDA kernel files share: the arithmetic type of each element type, conversions, packed (vectorised)
// loads and stores, the grid-stride loop and launch sizes, and the dtype switch of the entry points. nvcc only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/relevance_math.h"
#include "kernels.h"

namespace isnet_kernels {
namespace cuda {

// The arithmetic type: float for half and bfloat16 (as at::opmath_type on the CPU), else the type itself.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<__half> {
  using type = float;
};
template <>
struct OpMath<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

template <typename T>
__device__ __forceinline__ opmath_t<T> up(T x) {
  return x;
}
template <>
__device__ __forceinline__ float up<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float up<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T down(opmath_t<T> x) {
  return x;
}
template <>
__device__ __forceinline__ __half down<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 down<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// V consecutive elements, loaded and stored as one 16-byte (or narrower) access when V > 1.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <int V, typename T>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& x) {
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// Elements per 16-byte access: 4 floats, 2 doubles, 8 halves.
template <typename T>
constexpr int kVector = 16 / sizeof(T);

// Whether every pointer is aligned to `bytes` (the packed accesses need it).
inline bool aligned(int64_t bytes, const void* p) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}
template <typename... P>
inline bool aligned(int64_t bytes, const void* p, P... rest) {
  return aligned(bytes, p) && aligned(bytes, rest...);
}

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; grid-stride loops cover the rest.
constexpr int64_t kMaxBlocks = 65535;

// Blocks for `work` grid-stride iterations of kThreads threads (at least 1; callers skip work == 0).
inline unsigned blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? (blocks > 0 ? blocks : 1) : kMaxBlocks);
}

// The grid-stride loop over [0, count) in 64-bit indices.
#define ISNET_GRID_STRIDE(i, count)                                                                \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (count);       \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Calls body with scalar_t the element type of `dtype`; an unknown dtype is cudaErrorInvalidValue.
#define ISNET_CUDA_DISPATCH(dtype, ...)                        \
  [&]() -> cudaError_t {                                       \
    switch (dtype) {                                           \
      case DType::kFloat: {                                    \
        using scalar_t = float;                                \
        return __VA_ARGS__();                                  \
      }                                                        \
      case DType::kDouble: {                                   \
        using scalar_t = double;                               \
        return __VA_ARGS__();                                  \
      }                                                        \
      case DType::kHalf: {                                     \
        using scalar_t = __half;                               \
        return __VA_ARGS__();                                  \
      }                                                        \
      case DType::kBFloat16: {                                 \
        using scalar_t = __nv_bfloat16;                        \
        return __VA_ARGS__();                                  \
      }                                                        \
    }                                                          \
    return cudaErrorInvalidValue;                              \
  }()

}  // namespace cuda
}  // namespace isnet_kernels
