// The per-element maths of every fused relevance kernel (docs/kernels.md), written once for the CPU kernels
// (csrc/cpu/kernels.inc) and the CUDA kernels (csrc/cuda/*.cu): the CPU tests exercise exactly the arithmetic the
// GPU runs. Each function is one element's step of one op, in the operation order both backends use; the loop
// nests around them (blocks and threads, the sums over the M maps, loads and stores) are each backend's own.
//
// T is the arithmetic type (at::opmath_type on the CPU, float for half and bfloat16 on the GPU). A step that adds to
// a sum over the M maps takes that sum by reference and returns the map's own output element.
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

}  // namespace math
}  // namespace isnet_kernels
