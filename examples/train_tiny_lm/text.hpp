// The training text: the licence texts every Debian system ships (/usr/share/common-licenses),
// read as bytes, and the batches drawn from it: the same on every rank, whatever the mesh.
#pragma once

#include <train_tiny_lm/parameters.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace tiny_lm {

//! The licence texts of `folder` (regular files, not links), in name order, concatenated as bytes.
inline std::vector<std::uint8_t> read_corpus(const std::string& folder) {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(folder))
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<std::uint8_t> bytes;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    bytes.insert(bytes.end(), std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (bytes.empty()) throw std::runtime_error("no text found in " + folder);
  return bytes;
}

//! The unigram entropy of the bytes, in nats: the loss of a model that knows only byte frequencies.
inline double unigram_entropy(const std::vector<std::uint8_t>& bytes) {
  std::vector<double> count(256, 0.0);
  for (auto b : bytes) count[b] += 1;
  double h = 0;
  for (double c : count)
    if (c > 0) h -= c / bytes.size() * std::log(c / bytes.size());
  return h;
}

//! Where sequence b of step t's global batch starts: windows of S + 1 bytes (inputs and the next
//! byte as targets), drawn the same way on every rank.
inline std::int64_t window_start(const std::vector<std::uint8_t>& text, std::int64_t S, std::int64_t step,
                                 std::int64_t b, std::uint64_t seed) {
  const auto span = static_cast<std::uint64_t>(text.size()) - static_cast<std::uint64_t>(S) - 1;
  return static_cast<std::int64_t>(unit_seed(unit_seed(seed, static_cast<int>(step)), static_cast<int>(b)) % span);
}

}  // namespace tiny_lm
