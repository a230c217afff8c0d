// The loop nests of kernels.inc for the compiler's baseline target (isnet_kernels::base): the kernels every CPU
// runs, and the fallback where kernels_avx2.cpp's are not built or the CPU lacks AVX2.
#include "kernels.h"

namespace isnet_kernels {
namespace base {

#include "kernels.inc"

ISNET_INSTANTIATE_ALL_KERNELS

}  // namespace base
}  // namespace isnet_kernels
