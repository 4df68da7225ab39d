// Picks the vectorized kernels of simd_sort.h for this processor (compiled for the baseline x86-64 /
// any target, so it runs everywhere).
#include "simd_sort.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace pdl_ext {
namespace cpu {
namespace {

enum Level { kRadix = 0, kAvx2 = 1, kAvx512 = 2 };

Level processor_level() {
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also checks that the OS saves the vector state (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && avx512_kernels() != nullptr) {
    return kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && avx2_kernels() != nullptr) return kAvx2;
#endif
  return kRadix;
}

// PDL_EXT_CPU_PATH, or the older name PDL_EXT_CPU_SORT when only that one is set (the Python package
// warns that it is deprecated); an error names the variable that was read.
Level requested_level() {
  const char* name = "PDL_EXT_CPU_PATH";
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    name = "PDL_EXT_CPU_SORT";
    v = std::getenv(name);
  }
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0 || std::strcmp(v, "avx512") == 0) return kAvx512;
  if (std::strcmp(v, "avx2") == 0) return kAvx2;
  if (std::strcmp(v, "radix") == 0) return kRadix;
  TORCH_CHECK(false, name, " must be auto, avx512, avx2 or radix, got '", v, "'");
}

}  // namespace

const SimdKernels* simd_kernels() {
  static const Level available = processor_level();
  const Level level = std::min(available, requested_level());  // the environment is read per call
  return level == kAvx512 ? avx512_kernels() : level == kAvx2 ? avx2_kernels() : nullptr;
}

const char* cpu_path_name() {
  const SimdKernels* k = simd_kernels();
  return k != nullptr ? k->name : "radix";
}

}  // namespace cpu
}  // namespace pdl_ext
