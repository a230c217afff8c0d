// CUDA kernels of the elementwise relevance primitives (docs/kernels.md): the stabilised division, the product
// with the activation, the epsilon backward's input and stabiliser epilogues, and the residual split both ways.
//
// One thread owns V consecutive activation elements i of one image b (a "group") and loops over the M maps: the
// activation is loaded once for all maps, the sums over M stay in registers in the arithmetic type (float for half
// and bfloat16) and are written once, so no atomics and results independent of the launch. Across a warp the
// threads read consecutive groups of each map row: coalesced. V = 16 bytes / sizeof(element) when N is a multiple
// of it and every buffer is 16-byte aligned (then every row start (b * M + m) * N is too), else 1. Indices are
// 64-bit, the loops grid-stride (images along the grid's y, groups along x). Each element's arithmetic is a
// function of csrc/common/relevance_math.h, the one the CPU kernels call.
#include "device.cuh"

namespace isnet_kernels {
namespace cuda {
namespace {

// Grid-stride loops over the groups: images b along the grid's y dimension, groups of V elements n within an image
// along x (no integer division: 64-bit division is a subroutine call on the GPU).
#define ISNET_FOR_GROUPS(b, n, sizes, V)                                                                   \
  for (int64_t b = blockIdx.y; b < (sizes).B; b += gridDim.y)                                              \
    for (int64_t n = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * (V); n < (sizes).N;    \
         n += static_cast<int64_t>(gridDim.x) * blockDim.x * (V))

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    stab_divide_kernel(const T* __restrict__ R, const T* __restrict__ z, T* __restrict__ s, MapSizes n, double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  ISNET_FOR_GROUPS(b, i, n, V) {
    const Pack<T, V> zv = load<V>(z + b * n.N + i);
    O t[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      t[k] = math::stab(up(zv.v[k]), e);
    }
    for (int64_t m = 0; m < n.M; ++m) {
      const int64_t offset = (b * n.M + m) * n.N + i;
      const Pack<T, V> r = load<V>(R + offset);
      Pack<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        out.v[k] = down<T>(math::epsilon_divide(up(r.v[k]), t[k]));
      }
      store<V>(s + offset, out);
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    mul_activation_kernel(const T* __restrict__ c, const T* __restrict__ a, T* __restrict__ out, MapSizes n) {
  ISNET_FOR_GROUPS(b, i, n, V) {
    const Pack<T, V> av = load<V>(a + b * n.N + i);
    for (int64_t m = 0; m < n.M; ++m) {
      const int64_t offset = (b * n.M + m) * n.N + i;
      const Pack<T, V> cv = load<V>(c + offset);
      Pack<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        o.v[k] = down<T>(math::relevance_input(up(av.v[k]), up(cv.v[k])));
      }
      store<V>(out + offset, o);
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    epsilon_backward_input_kernel(const T* __restrict__ G, const T* __restrict__ a, const T* __restrict__ c,
                                  T* __restrict__ U, T* __restrict__ dA, MapSizes n) {
  using O = opmath_t<T>;
  ISNET_FOR_GROUPS(b, i, n, V) {
    const Pack<T, V> av = load<V>(a + b * n.N + i);
    O acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      acc[k] = O(0);
    }
    for (int64_t m = 0; m < n.M; ++m) {
      const int64_t offset = (b * n.M + m) * n.N + i;
      const Pack<T, V> gv = load<V>(G + offset);
      const Pack<T, V> cv = load<V>(c + offset);
      Pack<T, V> u;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        u.v[k] = down<T>(math::epsilon_input_step(up(gv.v[k]), up(av.v[k]), up(cv.v[k]), acc[k]));
      }
      store<V>(U + offset, u);
    }
    Pack<T, V> d;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      d.v[k] = down<T>(acc[k]);
    }
    store<V>(dA + b * n.N + i, d);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    epsilon_backward_stab_kernel(const T* __restrict__ Vg, const T* __restrict__ s, const T* __restrict__ z,
                                 T* __restrict__ dR, T* __restrict__ dZ, MapSizes n, double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  ISNET_FOR_GROUPS(b, i, n, V) {
    const Pack<T, V> zv = load<V>(z + b * n.N + i);
    O t[V], acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      t[k] = math::stab(up(zv.v[k]), e);
      acc[k] = O(0);
    }
    for (int64_t m = 0; m < n.M; ++m) {
      const int64_t offset = (b * n.M + m) * n.N + i;
      const Pack<T, V> vv = load<V>(Vg + offset);
      const Pack<T, V> sv = load<V>(s + offset);
      Pack<T, V> r;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        r.v[k] = down<T>(math::epsilon_stab_step(up(vv.v[k]), up(sv.v[k]), t[k], acc[k]));
      }
      store<V>(dR + offset, r);
    }
    Pack<T, V> d;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      d.v[k] = down<T>(acc[k]);
    }
    store<V>(dZ + b * n.N + i, d);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    residual_forward_kernel(const T* __restrict__ R, const T* __restrict__ x, const T* __restrict__ f,
                            const T* __restrict__ y, T* __restrict__ Rx, T* __restrict__ Rf, MapSizes n, double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  ISNET_FOR_GROUPS(b, i, n, V) {
    const int64_t act = b * n.N + i;
    const Pack<T, V> xv = load<V>(x + act), fv = load<V>(f + act), yv = load<V>(y + act);
    O t[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      t[k] = math::stab(up(yv.v[k]), e);
    }
    for (int64_t m = 0; m < n.M; ++m) {
      const int64_t offset = (b * n.M + m) * n.N + i;
      const Pack<T, V> r = load<V>(R + offset);
      Pack<T, V> ox, of;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        O rx, rf;
        math::residual_shares(up(r.v[k]), up(xv.v[k]), up(fv.v[k]), t[k], rx, rf);
        ox.v[k] = down<T>(rx);
        of.v[k] = down<T>(rf);
      }
      store<V>(Rx + offset, ox);
      store<V>(Rf + offset, of);
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    residual_backward_kernel(const T* __restrict__ Gx, const T* __restrict__ Gf, const T* __restrict__ R,
                             const T* __restrict__ x, const T* __restrict__ f, const T* __restrict__ y,
                             T* __restrict__ dR, T* __restrict__ dx, T* __restrict__ df, T* __restrict__ dy,
                             MapSizes n, double eps) {
  using O = opmath_t<T>;
  const O e = static_cast<O>(eps);
  ISNET_FOR_GROUPS(b, i, n, V) {
    const int64_t act = b * n.N + i;
    const Pack<T, V> xv = load<V>(x + act), fv = load<V>(f + act), yv = load<V>(y + act);
    O t[V], ax[V], af[V], ay[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      t[k] = math::stab(up(yv.v[k]), e);
      ax[k] = af[k] = ay[k] = O(0);
    }
    for (int64_t m = 0; m < n.M; ++m) {
      const int64_t offset = (b * n.M + m) * n.N + i;
      const Pack<T, V> gx = load<V>(Gx + offset), gf = load<V>(Gf + offset), r = load<V>(R + offset);
      Pack<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        out.v[k] = down<T>(math::residual_backward_step(up(gx.v[k]), up(gf.v[k]), up(r.v[k]), up(xv.v[k]),
                                                        up(fv.v[k]), t[k], ax[k], af[k], ay[k]));
      }
      store<V>(dR + offset, out);
    }
    Pack<T, V> ox, of, oy;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      ox.v[k] = down<T>(ax[k]);
      of.v[k] = down<T>(af[k]);
      oy.v[k] = down<T>(ay[k]);
    }
    store<V>(dx + act, ox);
    store<V>(df + act, of);
    store<V>(dy + act, oy);
  }
}

// Whether the packed kernel (V = kVector<T>) can run: N a multiple of V and every buffer 16-byte aligned.
template <typename T, typename... P>
bool packed(const MapSizes& n, P... pointers) {
  return kVector<T> > 1 && n.N % kVector<T> == 0 && aligned(16, pointers...);
}

// The grid of a kernel over the groups of n with V elements each: x covers an image's groups, y the images.
inline dim3 group_grid(const MapSizes& n, int64_t V) {
  const int64_t images = n.B < kMaxBlocks ? n.B : kMaxBlocks;
  return dim3(blocks_for((n.N + V - 1) / V), static_cast<unsigned>(images));
}

// Launches kernel<T, V> over the groups of n, packed when `pack`, on `stream`; nothing when there are no groups.
#define ISNET_LAUNCH_GROUPS(kernel, T, n, pack, stream, ...)                                   \
  do {                                                                                         \
    if ((n).B * (n).N > 0) {                                                                   \
      if (pack) {                                                                              \
        constexpr int kPack = kVector<T>;                                                      \
        kernel<T, kPack><<<group_grid(n, kPack), kThreads, 0, stream>>>(__VA_ARGS__);          \
      } else {                                                                                 \
        kernel<T, 1><<<group_grid(n, 1), kThreads, 0, stream>>>(__VA_ARGS__);                  \
      }                                                                                        \
    }                                                                                          \
  } while (0)

}  // namespace

cudaError_t stab_divide(DType dtype, const void* R, const void* z, void* s, MapSizes n, double eps,
                        cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    ISNET_LAUNCH_GROUPS(stab_divide_kernel, T, n, packed<T>(n, R, z, s), stream, static_cast<const T*>(R),
                        static_cast<const T*>(z), static_cast<T*>(s), n, eps);
    return cudaGetLastError();
  });
}

cudaError_t mul_activation(DType dtype, const void* c, const void* a, void* out, MapSizes n, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    ISNET_LAUNCH_GROUPS(mul_activation_kernel, T, n, packed<T>(n, c, a, out), stream, static_cast<const T*>(c),
                        static_cast<const T*>(a), static_cast<T*>(out), n);
    return cudaGetLastError();
  });
}

cudaError_t epsilon_backward_input(DType dtype, const void* G, const void* a, const void* c, void* U, void* dA,
                                   MapSizes n, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    ISNET_LAUNCH_GROUPS(epsilon_backward_input_kernel, T, n, packed<T>(n, G, a, c, U, dA), stream,
                        static_cast<const T*>(G), static_cast<const T*>(a), static_cast<const T*>(c),
                        static_cast<T*>(U), static_cast<T*>(dA), n);
    return cudaGetLastError();
  });
}

cudaError_t epsilon_backward_stab(DType dtype, const void* V, const void* s, const void* z, void* dR, void* dZ,
                                  MapSizes n, double eps, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    ISNET_LAUNCH_GROUPS(epsilon_backward_stab_kernel, T, n, packed<T>(n, V, s, z, dR, dZ), stream,
                        static_cast<const T*>(V), static_cast<const T*>(s), static_cast<const T*>(z),
                        static_cast<T*>(dR), static_cast<T*>(dZ), n, eps);
    return cudaGetLastError();
  });
}

cudaError_t residual_forward(DType dtype, const void* R, const void* x, const void* f, const void* y, void* Rx,
                             void* Rf, MapSizes n, double eps, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    ISNET_LAUNCH_GROUPS(residual_forward_kernel, T, n, packed<T>(n, R, x, f, y, Rx, Rf), stream,
                        static_cast<const T*>(R), static_cast<const T*>(x), static_cast<const T*>(f),
                        static_cast<const T*>(y), static_cast<T*>(Rx), static_cast<T*>(Rf), n, eps);
    return cudaGetLastError();
  });
}

cudaError_t residual_backward(DType dtype, const void* Gx, const void* Gf, const void* R, const void* x,
                              const void* f, const void* y, void* dR, void* dx, void* df, void* dy, MapSizes n,
                              double eps, cudaStream_t stream) {
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    ISNET_LAUNCH_GROUPS(residual_backward_kernel, T, n, packed<T>(n, Gx, Gf, R, x, f, y, dR, dx, df, dy), stream,
                        static_cast<const T*>(Gx), static_cast<const T*>(Gf), static_cast<const T*>(R),
                        static_cast<const T*>(x), static_cast<const T*>(f), static_cast<const T*>(y),
                        static_cast<T*>(dR), static_cast<T*>(dx), static_cast<T*>(df), static_cast<T*>(dy), n,
                        eps);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace isnet_kernels
