// CUDA kernels of the pooling relevance ops (docs/kernels.md): max-pool (winner-take-all) and average pooling
// (avg_pool2d, adaptive_avg_pool2d, a spatial mean) with the epsilon rule, both ways.
//
// Max-pool forward scatters each window's share to its winner: overlapping windows can share a winner, so the
// shares add atomically (in float for half and bfloat16, into a workspace then converted), one thread per window
// and map. Max-pool backward gathers: one thread per window, looping over the M maps with dz's sum in registers.
// Average pooling runs in gather form from the window tables (AvgPoolTables): forward one thread per input element
// summing the shares of the windows covering it; backward one thread per window (dR, and dz summed over M) and,
// for da, one thread per input element (summed over M). Every non-atomic output is written once by one thread.
// Indices are 64-bit, the loops grid-stride. Each element's arithmetic is a function of
// csrc/common/relevance_math.h, the one the CPU kernels call.
#include "device.cuh"

namespace isnet_kernels {
namespace cuda {
namespace {

// ---- max-pool, winner-take-all ------------------------------------------------------------------------------

// acc[b, m, c, indices[b, c, l]] += R[b, m, c, l] * z / t over every (b, m, c, l); acc starts at zero.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    maxpool_forward_kernel(const T* __restrict__ R, const T* __restrict__ z, const int64_t* __restrict__ indices,
                           A* __restrict__ acc, PoolSizes p, double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  ISNET_GRID_STRIDE(i, p.B * p.M * p.C * p.Lo) {
    const int64_t l = i % p.Lo;
    const int64_t row = i / p.Lo;  // (b * M + m) * C + c
    const int64_t c = row % p.C;
    const int64_t b = row / (p.M * p.C);
    const int64_t window = (b * p.C + c) * p.Lo + l;
    const int64_t winner = indices[window];
    if (winner >= 0 && winner < p.length) {
      const O share = math::winner_share(up(R[i]), math::winner_ratio(up(z[window]), e));
      atomicAdd(acc + row * p.length + winner, static_cast<A>(share));
    }
  }
}

// out = acc, converted to the element type (half and bfloat16 accumulate in float).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    convert_kernel(const float* __restrict__ acc, T* __restrict__ out, int64_t count) {
  ISNET_GRID_STRIDE(i, count) {
    out[i] = down<T>(acc[i]);
  }
}

// Launches convert_kernel for half and bfloat16; float and double accumulate in `out` itself (no conversion).
template <typename T>
void convert(const float* acc, T* out, int64_t count, cudaStream_t stream) {
  convert_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(acc, out, count);
}
inline void convert(const float*, float*, int64_t, cudaStream_t) {}
inline void convert(const float*, double*, int64_t, cudaStream_t) {}

// One thread per window (b, c, l): g = G at its winner; dR = g * z / t for every map, dz = sum_M g R * eps sign(z)/t^2.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    maxpool_backward_kernel(const T* __restrict__ G, const T* __restrict__ R, const T* __restrict__ z,
                            const int64_t* __restrict__ indices, T* __restrict__ dR, T* __restrict__ dz, PoolSizes p,
                            double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  ISNET_GRID_STRIDE(window, p.B * p.C * p.Lo) {
    const int64_t l = window % p.Lo;
    const int64_t plane = window / p.Lo;  // b * C + c
    const int64_t c = plane % p.C;
    const int64_t b = plane / p.C;
    const int64_t winner = indices[window];
    const bool valid = winner >= 0 && winner < p.length;
    const O zl = up(z[window]);
    const O ratio = math::winner_ratio(zl, e);
    O acc = O(0);
    for (int64_t m = 0; m < p.M; ++m) {
      const int64_t row = (b * p.M + m) * p.C + c;
      const O g = valid ? up(G[row * p.length + winner]) : O(0);
      dR[row * p.Lo + l] = down<T>(math::winner_backward_step(g, up(R[row * p.Lo + l]), ratio, acc));
    }
    dz[window] = down<T>(acc * math::winner_dz_factor(zl, e));
  }
}

// ---- average pooling -----------------------------------------------------------------------------------------

// The sum over the windows covering input (i, j) of w R / t, for the map plane `plane` ((b * M + m) * C + c) of
// activation plane `act` (b * C + c): c = P^T (w s), summed along W first, then H, as the CPU kernels do.
template <typename T>
__device__ __forceinline__ opmath_t<T> adjoint_at(const T* __restrict__ R, const T* __restrict__ z,
                                                  const AvgPoolTables& p, int64_t plane, int64_t act, int64_t i,
                                                  int64_t j, opmath_t<T> e) {
  using O = opmath_t<T>;
  const int64_t Lo = p.Ho * p.Wo;
  O sum = O(0);
  for (int64_t oh = p.h_lo[i]; oh < p.h_hi[i]; ++oh) {
    O row = O(0);
    for (int64_t ow = p.w_lo[j]; ow < p.w_hi[j]; ++ow) {
      const int64_t o = oh * p.Wo + ow;
      row += math::avgpool_share(up(R[plane * Lo + o]), math::stab(up(z[act * Lo + o]), e),
                                 static_cast<O>(p.weight[o]));
    }
    sum += row;
  }
  return sum;
}

// R_in[b, m, c, i, j] = a[b, c, i, j] * (P^T (w R / t))[i, j]: one thread per output element.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    avgpool_forward_kernel(const T* __restrict__ R, const T* __restrict__ a, const T* __restrict__ z,
                           T* __restrict__ out, AvgPoolTables p, double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  const int64_t L = p.H * p.W;
  ISNET_GRID_STRIDE(idx, p.B * p.M * p.C * L) {
    const int64_t ij = idx % L, i = ij / p.W, j = ij % p.W;
    const int64_t plane = idx / L;  // (b * M + m) * C + c
    const int64_t c = plane % p.C, b = plane / (p.M * p.C);
    const int64_t act = b * p.C + c;
    out[idx] = down<T>(math::relevance_input(up(a[act * L + ij]), adjoint_at(R, z, p, plane, act, i, j, e)));
  }
}

// One thread per window (b, c, oh, ow): for every map V = sum over the window of G * a, dR = V w / t; and
// dz = -sum_M dR * s, s = R / t.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    avgpool_backward_window_kernel(const T* __restrict__ G, const T* __restrict__ R, const T* __restrict__ a,
                                   const T* __restrict__ z, T* __restrict__ dR, T* __restrict__ dz, AvgPoolTables p,
                                   double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  const int64_t L = p.H * p.W, Lo = p.Ho * p.Wo;
  ISNET_GRID_STRIDE(window, p.B * p.C * Lo) {
    const int64_t o = window % Lo, oh = o / p.Wo, ow = o % p.Wo;
    const int64_t act = window / Lo;  // b * C + c
    const int64_t c = act % p.C, b = act / p.C;
    const O t = math::stab(up(z[window]), e);
    const O w = static_cast<O>(p.weight[o]);
    const int64_t i0 = p.h_start[oh], i1 = p.h_end[oh], j0 = p.w_start[ow], j1 = p.w_end[ow];
    O acc = O(0);
    for (int64_t m = 0; m < p.M; ++m) {
      const int64_t plane = (b * p.M + m) * p.C + c;
      O V = O(0);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) {
          V += up(G[plane * L + i * p.W + j]) * up(a[act * L + i * p.W + j]);  // U = G * a
        }
      }
      const O s = math::epsilon_divide(up(R[plane * Lo + o]), t);
      dR[plane * Lo + o] = down<T>(math::avgpool_backward_step(V, w, t, s, acc));
    }
    dz[window] = down<T>(acc);
  }
}

// One thread per input element (b, c, i, j): da = sum_M G * (P^T (w s))[i, j].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    avgpool_backward_input_kernel(const T* __restrict__ G, const T* __restrict__ R, const T* __restrict__ z,
                                  T* __restrict__ da, AvgPoolTables p, double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  const int64_t L = p.H * p.W;
  ISNET_GRID_STRIDE(idx, p.B * p.C * L) {
    const int64_t ij = idx % L, i = ij / p.W, j = ij % p.W;
    const int64_t act = idx / L;  // b * C + c
    const int64_t c = act % p.C, b = act / p.C;
    O acc = O(0);
    for (int64_t m = 0; m < p.M; ++m) {
      const int64_t plane = (b * p.M + m) * p.C + c;
      math::activation_gradient_step(up(G[plane * L + ij]), adjoint_at(R, z, p, plane, act, i, j, e), acc);
    }
    da[idx] = down<T>(acc);
  }
}

}  // namespace

cudaError_t maxpool_forward(DType dtype, const void* R, const void* z, const int64_t* indices, void* out,
                            float* workspace, PoolSizes p, double eps, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    using O = opmath_t<T>;
    constexpr bool direct = std::is_same<T, O>::value;  // float and double add into `out` itself
    const int64_t count = p.B * p.M * p.C * p.length;
    if (count == 0) {
      return cudaGetLastError();
    }
    if (!direct && workspace == nullptr) {
      return cudaErrorInvalidValue;
    }
    O* acc = direct ? reinterpret_cast<O*>(out) : reinterpret_cast<O*>(workspace);
    cudaError_t err = cudaMemsetAsync(acc, 0, count * sizeof(O), stream);
    if (err != cudaSuccess) {
      return err;
    }
    const int64_t windows = p.B * p.M * p.C * p.Lo;
    if (windows > 0) {
      maxpool_forward_kernel<T, O><<<blocks_for(windows), kThreads, 0, stream>>>(
          static_cast<const T*>(R), static_cast<const T*>(z), indices, acc, p, eps);
    }
    if (!direct) {
      convert(workspace, static_cast<T*>(out), count, stream);
    }
    return cudaGetLastError();
  });
}

cudaError_t maxpool_backward(DType dtype, const void* G, const void* R, const void* z, const int64_t* indices,
                             void* dR, void* dz, PoolSizes p, double eps, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    const int64_t windows = p.B * p.C * p.Lo;
    if (windows > 0) {
      maxpool_backward_kernel<T><<<blocks_for(windows), kThreads, 0, stream>>>(
          static_cast<const T*>(G), static_cast<const T*>(R), static_cast<const T*>(z), indices, static_cast<T*>(dR),
          static_cast<T*>(dz), p, eps);
    }
    return cudaGetLastError();
  });
}

cudaError_t avgpool_forward(DType dtype, const void* R, const void* a, const void* z, void* out,
                            const AvgPoolTables& p, double eps, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    const int64_t count = p.B * p.M * p.C * p.H * p.W;
    if (count > 0) {
      avgpool_forward_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(
          static_cast<const T*>(R), static_cast<const T*>(a), static_cast<const T*>(z), static_cast<T*>(out), p, eps);
    }
    return cudaGetLastError();
  });
}

cudaError_t avgpool_backward(DType dtype, const void* G, const void* R, const void* a, const void* z, void* dR,
                             void* dz, void* da, const AvgPoolTables& p, double eps, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    const int64_t windows = p.B * p.C * p.Ho * p.Wo;
    if (windows > 0) {
      avgpool_backward_window_kernel<T><<<blocks_for(windows), kThreads, 0, stream>>>(
          static_cast<const T*>(G), static_cast<const T*>(R), static_cast<const T*>(a), static_cast<const T*>(z),
          static_cast<T*>(dR), static_cast<T*>(dz), p, eps);
    }
    const int64_t inputs = p.B * p.C * p.H * p.W;
    if (da != nullptr && inputs > 0) {
      avgpool_backward_input_kernel<T><<<blocks_for(inputs), kThreads, 0, stream>>>(
          static_cast<const T*>(G), static_cast<const T*>(R), static_cast<const T*>(z), static_cast<T*>(da), p, eps);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace isnet_kernels
