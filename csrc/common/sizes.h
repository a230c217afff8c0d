// The flattened sizes the kernels of both devices take (plain C++: included by the CPU and the CUDA kernels).
#pragma once

#include <cstdint>

namespace isnet_kernels {

// Flattened sizes of a map tensor (B, M, N) and its activation (B, N).
struct MapSizes {
  int64_t B, M, N;
};

// Max-pool sizes: maps (B, M, C, Lo); z and indices (B, C, Lo) index planes of `length` input elements.
struct PoolSizes {
  int64_t B, M, C, Lo, length;
};

}  // namespace isnet_kernels
