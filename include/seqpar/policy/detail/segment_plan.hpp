//! @file segment_plan.hpp
//! How the CUDA linear-attention policies cut a chunk into segments that run in parallel: each
//! segment's state is computed from zero, the states are scanned into prefixes, and every segment
//! then starts from its prefix (host code; the kernels that do it are the policies').
#pragma once

#include <seqpar/config.hpp>

#include <algorithm>
#include <cstdint>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! How a chunk is cut into segments: `count` segments of `length` tokens (the last may be shorter).
struct segment_plan {
  std::int64_t length;  //!< tokens per segment, a multiple of the kernel's sub-block
  int count;            //!< segments
};

//! As many segments as one wave of resident blocks takes (two blocks of `blocks_per_segment` x
//! count per multiprocessor: count x blocks_per_segment <= 2 sms), so no partial second wave
//! leaves most of the GPU idle; but no more than `shortest`-token segments give (short segments
//! cost more in state passes than they gain). Lengths are rounded up to whole sub-blocks of
//! `granule` tokens, so the count may come out a little lower; a single segment whose blocks alone
//! exceed the wave stays one segment.
inline segment_plan plan_segments(std::int64_t C, std::int64_t blocks_per_segment, int sms, std::int64_t granule,
                                  std::int64_t shortest) {
  const std::int64_t per = std::max<std::int64_t>(blocks_per_segment, 1);
  const std::int64_t wave = std::max<std::int64_t>(2 * std::int64_t{sms} / per, 1);
  const std::int64_t target =
      std::clamp<std::int64_t>(wave, 1, std::max<std::int64_t>((C + shortest - 1) / shortest, 1));
  const std::int64_t even = (C + target - 1) / target;
  const std::int64_t length = std::max<std::int64_t>((even + granule - 1) / granule * granule, granule);
  return {length, static_cast<int>(std::max<std::int64_t>((C + length - 1) / length, 1))};
}

}  // namespace detail
SEQPAR_NAMESPACE_END
