//! @file values.hpp
//! Test values: bit patterns that encode where an element came from, small exact integers, and
//! bitwise comparison (moves must be bit-exact, whatever the element type).
#pragma once

#include <seqpar/types.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace seqpar_test {

//! A well-mixed 32-bit hash of a key (splitmix-style finaliser).
inline std::uint32_t mix(std::uint64_t key) {
  key += 0x9E3779B97F4A7C15ull;
  key = (key ^ (key >> 30)) * 0xBF58476D1CE4E5B9ull;
  key = (key ^ (key >> 27)) * 0x94D049BB133111EBull;
  return static_cast<std::uint32_t>(key ^ (key >> 31));
}

//! Packs a few small fields (each < 2^12) into one key.
inline std::uint64_t key_of(std::uint64_t a, std::uint64_t b = 0, std::uint64_t c = 0, std::uint64_t d = 0) {
  return (((a * 4096 + b) * 4096 + c) * 4096) + d;
}

//! An element whose bits are determined by `key`; distinct keys give distinct bits (with high odds).
template <class T>
T tagged(std::uint64_t key) {
  const std::uint32_t bits = mix(key);
  T out;
  if constexpr (sizeof(T) == 4) {
    std::memcpy(static_cast<void*>(&out), &bits, 4);
  } else if constexpr (sizeof(T) == 2) {
    const std::uint16_t half = static_cast<std::uint16_t>(bits ^ (bits >> 16));
    std::memcpy(static_cast<void*>(&out), &half, 2);
  } else {
    const std::uint64_t wide = (static_cast<std::uint64_t>(mix(key + 1)) << 32) | bits;
    std::memcpy(static_cast<void*>(&out), &wide, sizeof(T));
  }
  return out;
}

//! True when a and b have the same bytes.
template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

//! Index of the first element whose bits differ, or -1.
template <class T>
long first_mismatch(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) return 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!same_bits(got[i], want[i])) return static_cast<long>(i);
  return -1;
}

//! A value every buffer is filled with before a run, so an element nobody wrote stands out.
template <class T>
T poison() {
  return tagged<T>(0xDEADBEEFull);
}

//! Converts a small integer exactly to T (every wire type holds integers up to 256 exactly).
template <class T>
T exact(int v) {
  if constexpr (seqpar::element<T>) return seqpar::from_float<T>(static_cast<float>(v));
  else return static_cast<T>(v);
}

//! Reads a value of T as double.
template <class T>
double as_double(T v) {
  if constexpr (seqpar::element<T>) return seqpar::to_float(v);
  else return static_cast<double>(v);
}

//! A fresh random generator, seeded from the device so every run sees new inputs; the seed is
//! printed once so a failure can be replayed with SEQPAR_TEST_SEED=<seed>.
inline std::mt19937_64& rng() {
  static std::mt19937_64 engine = [] {
    const char* fixed = std::getenv("SEQPAR_TEST_SEED");
    const std::uint64_t seed = fixed ? std::strtoull(fixed, nullptr, 10) : std::random_device{}();
    std::printf("seqpar tests: SEQPAR_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
    return std::mt19937_64(seed);
  }();
  return engine;
}

//! n floats uniform in [-1, 1) from a generator of their own seeded with `seed` (safe on any thread;
//! pass rng()() for fresh values).
inline std::vector<float> uniform_floats(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& e : x) e = u(engine);
  return x;
}

//! A log-gate g <= 0 whose decay exp(g) is drawn log-uniformly from [lo, hi] (0 < lo <= hi <= 1).
inline float random_log_gate(double lo, double hi) {
  const float g = static_cast<float>(std::uniform_real_distribution<double>(std::log(lo), std::log(hi))(rng()));
  return g < 0.0f ? g : 0.0f;
}

//! Uniform random integer in [lo, hi].
inline int random_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng()); }

}  // namespace seqpar_test
