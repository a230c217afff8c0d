// The per-element maths of every fused relevance kernel (docs/kernels.md), written once for the CPU kernels
// (csrc/cpu/kernels.inc) and the CUDA kernels (csrc/cuda/*.cu): the CPU tests exercise exactly the arithmetic the
// GPU runs. Each function is one element's step of one op, in the operation order both backends use; the loop
// nests around them (blocks and threads, the sums over the M maps, loads and stores) are each backend's own.
//
// T is the arithmetic type (at::opmath_type on the CPU, float for half and bfloat16 on the GPU). A step that adds to
// a sum over the M maps takes that sum by reference and returns the map's own output element.
//
// The elementwise ops (the end of this file) are whole: each is a struct of its schema and its per-element maths, and
// one line of ISNET_ELEMENTWISE_OPS; the generic loops of the CPU (csrc/cpu/kernels.inc) and CUDA
// (csrc/cuda/elementwise.cu) kernels and the operators of both extensions are instantiated from that list.
//
// Self-contained: no includes, nothing of torch or CUDA. ISNET_HD is `__host__ __device__` under nvcc and an
// always-inlined function otherwise (the CPU loops must see the arithmetic to vectorise it; GCC inlines these
// baseline functions into the AVX2 loop nests, whose target is a superset).
#pragma once

#if defined(__CUDACC__)
#define ISNET_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define ISNET_HD inline __attribute__((always_inline))
#else
#define ISNET_HD inline
#endif

namespace isnet_kernels {
namespace math {

// ---- the stabiliser -----------------------------------------------------------------------------------------

// eps * sign(z) with sign(0) = +1: a select of constants (vectorises; NaN z gives -eps, and t stays NaN).
template <typename T>
ISNET_HD T stab_sign(T z, T eps) {
  return z >= T(0) ? eps : -eps;
}

// t = stab(z) = z + eps * sign(z), sign(0) = +1. z + (-eps) == z - eps exactly; eps = 0 gives t = z.
template <typename T>
ISNET_HD T stab(T z, T eps) {
  return z + stab_sign(z, eps);
}

// ---- epsilon rule: s = R / t, R_in = a * (W^T s) --------------------------------------------------------------

// s = R / t.
template <typename T>
ISNET_HD T epsilon_divide(T R, T t) {
  return R / t;
}

// The relevance of an input: R_in = a * c, c = W^T s (also mul_activation, and the poolings' last step).
template <typename T>
ISNET_HD T relevance_input(T a, T c) {
  return a * c;
}

// dA += G * c: one map's term of the gradient of R_in = a * c with respect to a (dA = sum_M G * c).
template <typename T>
ISNET_HD void activation_gradient_step(T g, T c, T& dA) {
  dA += g * c;
}

// The input epilogue of the backward, per map: U = G * a (the gradient with respect to c), and dA += G * c.
template <typename T>
ISNET_HD T epsilon_input_step(T g, T a, T c, T& dA) {
  activation_gradient_step(g, c, dA);
  return g * a;
}

// The stabiliser epilogue of the backward, per map: dR = V / t, and dZ -= dR * s (dZ = -sum_M V s / t).
// -(a + b) == -a - b exactly, so subtracting each map's term equals negating the sum.
template <typename T>
ISNET_HD T epsilon_stab_step(T V, T s, T t, T& dZ) {
  const T r = V / t;
  dZ -= r * s;
  return r;
}

// ---- residual add y = x + f: shares proportional to the addends ---------------------------------------------

// Forward: with share = R / t (t = stab(y)), R_x = x * share and R_f = f * share.
template <typename T>
ISNET_HD void residual_shares(T R, T x, T f, T t, T& Rx, T& Rf) {
  const T share = R / t;
  Rx = x * share;
  Rf = f * share;
}

// Backward, per map: with share = R / t and Q = Gx x + Gf f, dR = Q / t; dx += Gx share, df += Gf share and
// dy -= dR share (dy = -sum_M Q R / t^2).
template <typename T>
ISNET_HD T residual_backward_step(T gx, T gf, T R, T x, T f, T t, T& dx, T& df, T& dy) {
  const T share = R / t;
  const T r = (gx * x + gf * f) / t;
  dx += gx * share;
  df += gf * share;
  dy -= r * share;
  return r;
}

// ---- max-pool, winner-take-all: the winner of each window takes R * z / t ------------------------------------

// The winner's fraction z / t of its window's relevance (1 when eps = 0 and z != 0).
template <typename T>
ISNET_HD T winner_ratio(T z, T eps) {
  return z / stab(z, eps);
}

// The winner's share of R; windows sharing a winner add their shares (the kernels sum collisions).
template <typename T>
ISNET_HD T winner_share(T R, T ratio) {
  return R * ratio;
}

// d(z / t)/dz = eps * sign(z) / t^2: the factor of dz = sum_M g R (g = G at the winner).
template <typename T>
ISNET_HD T winner_dz_factor(T z, T eps) {
  const T t = stab(z, eps);
  return stab_sign(z, eps) / (t * t);
}

// Backward, per map: dR = g * ratio, and acc += g * R (dz = acc * winner_dz_factor at the end).
template <typename T>
ISNET_HD T winner_backward_step(T g, T R, T ratio, T& acc) {
  acc += g * R;
  return g * ratio;
}

// ---- average pooling: a convolution with the fixed weight w = 1 / divisor of each window -----------------------

// The window's term of the forward's adjoint: w * R / t (R_in = a * sum over the windows covering the input).
template <typename T>
ISNET_HD T avgpool_share(T R, T t, T w) {
  return R / t * w;
}

// Backward, per map and window: with V = sum over the window of G * a and s = R / t, dR = V w / t and
// dz -= dR * s (dz = -sum_M V w s / t). V sums U = G * a (epsilon_input_step's U) over the window; da adds
// G * c with c the sum of the covering windows' shares (activation_gradient_step).
template <typename T>
ISNET_HD T avgpool_backward_step(T V, T w, T t, T s, T& dz) {
  const T r = V * w / t;
  dz -= r * s;
  return r;
}

// ---- the elementwise ops ------------------------------------------------------------------------------------
//
// An elementwise op reads map tensors (B, M, N) and activation tensors (B, N), shared by the M maps, and writes map
// tensors and sums over the M maps (B, N). Its struct holds:
//   kSchema    the operator torch.ops.isnet_kernels.<name>: its tensor arguments, then `float eps` if it takes one;
//   kInputs    one letter per tensor argument: 'm' a map, 'a' an activation;
//   kOutputs   one letter per output: 'm' a map (the maps' shape), 's' a sum over the M maps (the activations');
//   kShapeOf   the tensor argument (an index) whose shape the other maps must have; the activations must have the
//              first activation's;
//   prepare(a, eps)        once per element for all maps: the activations' values a (in argument order), in place;
//   step(m, a, out, sum)   one map's element: the maps' values m and the prepared a give the map outputs out, and add
//                          to the sums sum (which start at zero), all in argument and output order.
// A new elementwise op is its struct here and one line in ISNET_ELEMENTWISE_OPS (and its record in
// isnet_kernels/ops/fused.py, docs/extending.md).

// How many of `kinds` are `kind`, and the index of the j-th of them (-1 when there is none).
constexpr int count_of(const char* kinds, char kind) {
  int n = 0;
  for (int i = 0; kinds[i] != '\0'; ++i) {
    n += kinds[i] == kind;
  }
  return n;
}

constexpr int index_of(const char* kinds, char kind, int j) {
  for (int i = 0; kinds[i] != '\0'; ++i) {
    if (kinds[i] == kind && j-- == 0) {
      return i;
    }
  }
  return -1;
}

// The counts the loops size their arrays by (at least 1: C++ has no empty arrays).
template <typename Op>
struct Arity {
  static constexpr int kIn = count_of(Op::kInputs, 'm') + count_of(Op::kInputs, 'a');
  static constexpr int kMaps = count_of(Op::kInputs, 'm');
  static constexpr int kActs = count_of(Op::kInputs, 'a');
  static constexpr int kOut = count_of(Op::kOutputs, 'm') + count_of(Op::kOutputs, 's');
  static constexpr int kMapOuts = count_of(Op::kOutputs, 'm');
  static constexpr int kSums = count_of(Op::kOutputs, 's');
  static constexpr int size(int n) { return n > 0 ? n : 1; }
};

// s = R / t.  R, s (B, M, N); z (B, N).
struct StabDivide {
  static constexpr const char* kSchema = "stab_divide(Tensor R, Tensor z, float eps) -> Tensor";
  static constexpr const char* kInputs = "ma";
  static constexpr const char* kOutputs = "m";
  static constexpr int kShapeOf = 0;
  template <typename T>
  ISNET_HD static void prepare(T* a, T eps) {
    a[0] = stab(a[0], eps);
  }
  template <typename T>
  ISNET_HD static void step(const T* m, const T* a, T* out, T*) {
    out[0] = epsilon_divide(m[0], a[0]);
  }
};

// out = c * a.  c, out (B, M, N); a (B, N).
struct MulActivation {
  static constexpr const char* kSchema = "mul_activation(Tensor c, Tensor a) -> Tensor";
  static constexpr const char* kInputs = "ma";
  static constexpr const char* kOutputs = "m";
  static constexpr int kShapeOf = 0;
  template <typename T>
  ISNET_HD static void prepare(T*, T) {}
  template <typename T>
  ISNET_HD static void step(const T* m, const T* a, T* out, T*) {
    out[0] = relevance_input(a[0], m[0]);
  }
};

// U = G * a, dA = sum_M G * c.  G, c, U (B, M, N); a, dA (B, N).
struct EpsilonBackwardInput {
  static constexpr const char* kSchema = "epsilon_backward_input(Tensor G, Tensor a, Tensor c) -> (Tensor, Tensor)";
  static constexpr const char* kInputs = "mam";
  static constexpr const char* kOutputs = "ms";
  static constexpr int kShapeOf = 0;
  template <typename T>
  ISNET_HD static void prepare(T*, T) {}
  template <typename T>
  ISNET_HD static void step(const T* m, const T* a, T* out, T* sum) {
    out[0] = epsilon_input_step(m[0], a[0], m[1], sum[0]);
  }
};

// dR = V / t, dZ = -sum_M V * s / t.  V, s, dR (B, M, N); z, dZ (B, N).
struct EpsilonBackwardStab {
  static constexpr const char* kSchema =
      "epsilon_backward_stab(Tensor V, Tensor s, Tensor z, float eps) -> (Tensor, Tensor)";
  static constexpr const char* kInputs = "mma";
  static constexpr const char* kOutputs = "ms";
  static constexpr int kShapeOf = 0;
  template <typename T>
  ISNET_HD static void prepare(T* a, T eps) {
    a[0] = stab(a[0], eps);
  }
  template <typename T>
  ISNET_HD static void step(const T* m, const T* a, T* out, T* sum) {
    out[0] = epsilon_stab_step(m[0], m[1], a[0], sum[0]);
  }
};

// T = R / stab(y); R_x = x * T, R_f = f * T.  R, Rx, Rf (B, M, N); x, f, y (B, N).
struct ResidualForward {
  static constexpr const char* kSchema =
      "residual_forward(Tensor R, Tensor x, Tensor f, Tensor y, float eps) -> (Tensor, Tensor)";
  static constexpr const char* kInputs = "maaa";
  static constexpr const char* kOutputs = "mm";
  static constexpr int kShapeOf = 0;
  template <typename T>
  ISNET_HD static void prepare(T* a, T eps) {
    a[2] = stab(a[2], eps);
  }
  template <typename T>
  ISNET_HD static void step(const T* m, const T* a, T* out, T*) {
    residual_shares(m[0], a[0], a[1], a[2], out[0], out[1]);
  }
};

// Q = Gx x + Gf f, dR = Q / t; dx = sum_M Gx T, df = sum_M Gf T, dy = -sum_M dR T (T = R / t).
// Gx, Gf, R, dR (B, M, N); x, f, y, dx, df, dy (B, N).
struct ResidualBackward {
  static constexpr const char* kSchema =
      "residual_backward(Tensor Gx, Tensor Gf, Tensor R, Tensor x, Tensor f, Tensor y, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor)";
  static constexpr const char* kInputs = "mmmaaa";
  static constexpr const char* kOutputs = "msss";
  static constexpr int kShapeOf = 2;
  template <typename T>
  ISNET_HD static void prepare(T* a, T eps) {
    a[2] = stab(a[2], eps);
  }
  template <typename T>
  ISNET_HD static void step(const T* m, const T* a, T* out, T* sum) {
    out[0] = residual_backward_step(m[0], m[1], m[2], a[0], a[1], a[2], sum[0], sum[1], sum[2]);
  }
};

// Every elementwise op, X(struct): the loops, the operators and their registrations are instantiated from this list.
#define ISNET_ELEMENTWISE_OPS(X) \
  X(StabDivide)                  \
  X(MulActivation)               \
  X(EpsilonBackwardInput)        \
  X(EpsilonBackwardStab)         \
  X(ResidualForward)             \
  X(ResidualBackward)

}  // namespace math
}  // namespace isnet_kernels
