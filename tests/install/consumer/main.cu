// Code built by nvcc against the installed package: C++20 is on without any flag of the project's,
// and host/device helpers compile for the device.
#include <seqpar/seqpar.hpp>

#include <cstdio>

static_assert(__cplusplus >= 202002L, "seqpar::seqpar must put nvcc in C++20 mode");

namespace seqpar::SEQPAR_ABI_NAMESPACE::SEQPAR_KERNEL_NAMESPACE {
//! Doubles every element in fp32 (compiled for the device to prove the helpers are usable there).
__global__ void twice(__nv_bfloat16* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = from_float<__nv_bfloat16>(2.0f * to_float(x[i]));
}
}  // namespace seqpar::SEQPAR_ABI_NAMESPACE::SEQPAR_KERNEL_NAMESPACE

int main() {
  std::printf("seqpar consumer (nvcc): kernel namespace %s, C++ %ld\n", SEQPAR_DETAIL_STR(SEQPAR_KERNEL_NAMESPACE),
              static_cast<long>(__cplusplus));
  return 0;
}
