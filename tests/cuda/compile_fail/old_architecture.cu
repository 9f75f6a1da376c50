// Compile-fail: the tensor-core kernels compiled for sm_75 (a build that kept an old default
// architecture) stop the build with seqpar's message. With SEQPAR_ALLOW_PRE_SM80 the same file compiles.
#include <seqpar/policy/linear_cuda.cuh>

int main() { return 0; }
