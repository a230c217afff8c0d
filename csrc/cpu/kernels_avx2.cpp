// The loop nests of kernels.inc for AVX2 + FMA + F16C (isnet_kernels::avx2), built with GCC on x86-64 and run
// when the CPU has them (isnet_kernels.cpp decides per call): twice the vector width of the baseline build.
//
// The target pragma comes after every #include, so only the functions defined below get these instructions:
// inline functions of the headers stay baseline code, and nothing compiled for AVX2 can be picked by the linker
// for code that runs on an older CPU.
#include "kernels.h"

#if ISNET_KERNELS_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace isnet_kernels {
namespace avx2 {

#include "kernels.inc"

ISNET_INSTANTIATE_ALL_KERNELS

}  // namespace avx2
}  // namespace isnet_kernels

#pragma GCC pop_options
#endif
