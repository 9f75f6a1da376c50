//! @file error.hpp
//! seqpar::error, the rank that errors are attributed to, and the checking macros.
#pragma once

#include <seqpar/config.hpp>

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

SEQPAR_NAMESPACE_BEGIN

//! What kind of failure an error reports.
enum class errc {
  invalid_argument,  //!< a shape, size, count, pointer or dtype the operation cannot accept
  unsupported,       //!< a valid request that this backend or build cannot serve
  peer_failed,       //!< another rank of the group failed, so this rank stopped too
  cuda,              //!< a CUDA runtime call failed
  nccl,              //!< an NCCL call failed
  mpi,               //!< an MPI call failed
  timeout,           //!< a wait for a collective ran past its bound (a peer stopped or fell far behind)
};

//! Short name of an error code, as it appears in messages.
inline const char* to_string(errc c) noexcept {
  switch (c) {
    case errc::invalid_argument: return "invalid argument";
    case errc::unsupported: return "unsupported";
    case errc::peer_failed: return "peer failed";
    case errc::cuda: return "CUDA error";
    case errc::nccl: return "NCCL error";
    case errc::mpi: return "MPI error";
    case errc::timeout: return "timeout";
  }
  return "error";
}

namespace detail {
//! The rank of the calling thread within its group, or -1 when unknown.
inline thread_local int this_thread_rank = -1;
}  // namespace detail

//! Sets the rank that errors thrown by this thread name, restoring the previous one on exit.
class scoped_rank {
 public:
  //! Attributes errors raised by this thread to `rank` until destruction.
  explicit scoped_rank(int rank) noexcept : saved_(std::exchange(detail::this_thread_rank, rank)) {}
  //! Restores the rank that was attributed before construction.
  ~scoped_rank() { detail::this_thread_rank = saved_; }
  scoped_rank(const scoped_rank&) = delete;             //!< not copyable: one restore per scope
  scoped_rank& operator=(const scoped_rank&) = delete;  //!< not copyable: one restore per scope

 private:
  int saved_;
};

//! The exception seqpar throws: a code, the failing expression, where, and on which rank.
class error : public std::runtime_error {
 public:
  //! Builds an error; `what()` reads "seqpar: <code>: <message> [rank r] (file:line: expression)".
  error(errc code, std::string message, std::string expression, const char* file, int line,
        int rank = detail::this_thread_rank)
      : std::runtime_error(format(code, message, expression, file, line, rank)),
        code_(code),
        message_(std::move(message)),
        expression_(std::move(expression)),
        file_(file),
        line_(line),
        rank_(rank) {}

  //! The kind of failure.
  errc code() const noexcept { return code_; }
  //! The message alone, without code, rank or location.
  const std::string& message() const noexcept { return message_; }
  //! The source text of the check or call that failed.
  const std::string& expression() const noexcept { return expression_; }
  //! Source file of the failing check.
  const char* file() const noexcept { return file_; }
  //! Source line of the failing check.
  int line() const noexcept { return line_; }
  //! Rank of the thread or process that raised it, -1 when unknown.
  int rank() const noexcept { return rank_; }

 private:
  static std::string format(errc code, const std::string& message, const std::string& expression,
                            const char* file, int line, int rank) {
    std::ostringstream os;
    os << "seqpar: " << to_string(code) << ": " << message;
    if (rank >= 0) os << " [rank " << rank << "]";
    os << " (" << file << ":" << line;
    if (!expression.empty()) os << ": " << expression;
    os << ")";
    return os.str();
  }

  errc code_;
  std::string message_;
  std::string expression_;
  const char* file_;
  int line_;
  int rank_;
};

SEQPAR_NAMESPACE_END

//! Throws seqpar::error(code) with a streamed message, e.g. SEQPAR_FAIL(errc::unsupported, "x " << n).
#define SEQPAR_FAIL(code, stream_expr)                                                            \
  do {                                                                                            \
    std::ostringstream seqpar_os_;                                                                \
    seqpar_os_ << stream_expr;                                                                    \
    throw ::seqpar::error((code), seqpar_os_.str(), "", __FILE__, __LINE__);                      \
  } while (0)

//! Throws an invalid_argument seqpar::error with a streamed message unless `cond` holds.
#define SEQPAR_EXPECTS(cond, stream_expr)                                                         \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      std::ostringstream seqpar_os_;                                                              \
      seqpar_os_ << stream_expr;                                                                  \
      throw ::seqpar::error(::seqpar::errc::invalid_argument, seqpar_os_.str(), #cond, __FILE__, \
                            __LINE__);                                                            \
    }                                                                                             \
  } while (0)
