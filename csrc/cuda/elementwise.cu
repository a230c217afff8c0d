// CUDA kernels of the elementwise relevance primitives (docs/kernels.md): one generic kernel, instantiated for every
// op of ISNET_ELEMENTWISE_OPS (csrc/common/relevance_math.h: the stabilised division, the product with the
// activation, the epsilon backward's input and stabiliser epilogues, the residual split both ways).
//
// One thread owns V consecutive activation elements i of one image b (a "group") and loops over the M maps: the
// activation is loaded once for all maps, the sums over M stay in registers in the arithmetic type (float for half
// and bfloat16) and are written once, so no atomics and results independent of the launch. Across a warp the
// threads read consecutive groups of each map row: coalesced. V = 16 bytes / sizeof(element) when N is a multiple
// of it and every buffer is 16-byte aligned (then every row start (b * M + m) * N is too), else 1. Indices are
// 64-bit, the loops grid-stride (images along the grid's y, groups along x). Each element's arithmetic is its op's
// Op::prepare and Op::step of csrc/common/relevance_math.h, the ones the CPU kernels call.
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

// The pointers of one elementwise call, passed to the kernel by value: `in` its tensor arguments, `out` its
// outputs, in schema order.
template <typename Op, typename T>
struct Buffers {
  const T* in[math::Arity<Op>::kIn];
  T* out[math::Arity<Op>::kOut];
};

// One elementwise op of csrc/common/relevance_math.h (Op: its struct). Per group: the activations' values, prepared
// once (Op::prepare), the sums zeroed; for each map its values and Op::step, the map outputs stored; then the sums.
template <typename Op, typename T, int V>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(Buffers<Op, T> p, MapSizes n, double eps) {
  using O = opmath_t<T>;
  using A = math::Arity<Op>;
  constexpr int kMaps = A::kMaps, kActs = A::kActs, kMapOuts = A::kMapOuts, kSums = A::kSums;
  const O e = static_cast<O>(eps);
  ISNET_FOR_GROUPS(b, i, n, V) {
    const int64_t act = b * n.N + i;
    O a[V][A::size(kActs)], sum[V][A::size(kSums)];
#pragma unroll
    for (int j = 0; j < kActs; ++j) {
      const Pack<T, V> v = load<V>(p.in[math::index_of(Op::kInputs, 'a', j)] + act);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        a[k][j] = up(v.v[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      Op::prepare(a[k], e);
#pragma unroll
      for (int j = 0; j < kSums; ++j) {
        sum[k][j] = O(0);
      }
    }
    for (int64_t m = 0; m < n.M; ++m) {
      const int64_t offset = (b * n.M + m) * n.N + i;
      Pack<T, V> x[A::size(kMaps)], y[A::size(kMapOuts)];
#pragma unroll
      for (int j = 0; j < kMaps; ++j) {
        x[j] = load<V>(p.in[math::index_of(Op::kInputs, 'm', j)] + offset);
      }
#pragma unroll
      for (int k = 0; k < V; ++k) {
        O xk[A::size(kMaps)], yk[A::size(kMapOuts)];
#pragma unroll
        for (int j = 0; j < kMaps; ++j) {
          xk[j] = up(x[j].v[k]);
        }
        Op::step(xk, a[k], yk, sum[k]);
#pragma unroll
        for (int j = 0; j < kMapOuts; ++j) {
          y[j].v[k] = down<T>(yk[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < kMapOuts; ++j) {
        store<V>(p.out[math::index_of(Op::kOutputs, 'm', j)] + offset, y[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kSums; ++j) {
      Pack<T, V> d;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        d.v[k] = down<T>(sum[k][j]);
      }
      store<V>(p.out[math::index_of(Op::kOutputs, 's', j)] + act, d);
    }
  }
}

// The grid of a kernel over the groups of n with V elements each: x covers an image's groups, y the images.
inline dim3 group_grid(const MapSizes& n, int64_t V) {
  const int64_t images = n.B < kMaxBlocks ? n.B : kMaxBlocks;
  return dim3(blocks_for((n.N + V - 1) / V), static_cast<unsigned>(images));
}

// Launches kernel<Op, T, V> over the groups of n, packed when `pack`, on `stream`; nothing when there are no groups.
#define ISNET_LAUNCH_GROUPS(kernel, Op, T, n, pack, stream, ...)                               \
  do {                                                                                         \
    if ((n).B * (n).N > 0) {                                                                   \
      if (pack) {                                                                              \
        constexpr int kPack = kVector<T>;                                                      \
        kernel<Op, T, kPack><<<group_grid(n, kPack), kThreads, 0, stream>>>(__VA_ARGS__);      \
      } else {                                                                                 \
        kernel<Op, T, 1><<<group_grid(n, 1), kThreads, 0, stream>>>(__VA_ARGS__);              \
      }                                                                                        \
    }                                                                                          \
  } while (0)

}  // namespace

template <typename Op>
cudaError_t elementwise(DType dtype, const void* const* in, void* const* out, MapSizes n, double eps,
                        cudaStream_t stream) {
  using A = math::Arity<Op>;
  return ISNET_CUDA_DISPATCH(dtype, [&] {
    using T = scalar_t;
    Buffers<Op, T> p;
    bool pack = kVector<T> > 1 && n.N % kVector<T> == 0;
    for (int j = 0; j < A::kIn; ++j) {
      p.in[j] = static_cast<const T*>(in[j]);
      pack = pack && aligned(16, in[j]);
    }
    for (int j = 0; j < A::kOut; ++j) {
      p.out[j] = static_cast<T*>(out[j]);
      pack = pack && aligned(16, out[j]);
    }
    ISNET_LAUNCH_GROUPS(elementwise_kernel, Op, T, n, pack, stream, p, n, eps);
    return cudaGetLastError();
  });
}

#define ISNET_INSTANTIATE_ELEMENTWISE(Op)                                                                      \
  template cudaError_t elementwise<math::Op>(DType, const void* const*, void* const*, MapSizes, double, \
                                             cudaStream_t);
ISNET_ELEMENTWISE_OPS(ISNET_INSTANTIATE_ELEMENTWISE)

}  // namespace cuda
}  // namespace isnet_kernels
