// A layer built from a run of integers must not compile: the sizes are named (attention_shape), so
// heads, kv_heads, batch and head_dim cannot be swapped silently. Built as is (the named form) it
// compiles; with SEQPAR_INTEGER_RUN (the form the layers took before) the build must fail.
#include <seqpar/comm/in_process.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>

using layer = seqpar::ulysses_attention<seqpar::reference_attention, seqpar::in_process_communicator, float>;

//! Builds a layer of H = 8, H_kv = 2, B = 1, D = 64.
void build(seqpar::in_process_communicator& comm, const seqpar::seq_partition& part) {
#ifdef SEQPAR_INTEGER_RUN
  layer l(seqpar::reference_attention{}, comm, part, 8, 2, 1, 64, seqpar::elements<float>, {});
#else
  layer l(seqpar::reference_attention{}, comm, part, {.batch = 1, .heads = 8, .kv_heads = 2, .head_dim = 64},
          seqpar::elements<float>, {});
#endif
}
