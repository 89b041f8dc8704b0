#pragma once
/// @file error.hpp
/// The exception hierarchy of efcomm. Every failure is reported as an `efcomm::Error` subclass
/// whose `code()` names the class of failure; the Python package maps each to `ef.<Name>`.

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace efcomm {

/// Class of a failure; stable numbers, also exposed to Python as `Error.code`.
enum class ErrorCode : int {
  kInternal = 1,
  kInvalidArgument = 2,
  kNonFinite = 3,
  kCorruptMessage = 4,
  kMismatch = 5,
  kCollectiveTimeout = 6,
  kBackendUnavailable = 7,
};

/// Base of all efcomm exceptions.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
  /// An internal error (a broken invariant of efcomm itself).
  explicit Error(const std::string& what) : Error(ErrorCode::kInternal, what) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

/// A caller passed a bad value: wrong shape, dtype, parameter or spec string.
class InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& w) : Error(ErrorCode::kInvalidArgument, w) {}
};

/// NaN or Inf met where finite values are required.
class NonFiniteError : public Error {
 public:
  explicit NonFiniteError(const std::string& w) : Error(ErrorCode::kNonFinite, w) {}
};

/// A payload failed validation (magic, version, sizes, checksum, indices, ...).
class CorruptMessageError : public Error {
 public:
  explicit CorruptMessageError(const std::string& w) : Error(ErrorCode::kCorruptMessage, w) {}
};

/// Ranks disagree on a collective's shape, dtype, key or order; `ranks()` are those whose call
/// differs from most ranks' (ties: from rank 0's), empty where not known (a state dict's
/// mismatch).
class MismatchError : public Error {
 public:
  explicit MismatchError(const std::string& w, std::vector<int> ranks = {})
      : Error(ErrorCode::kMismatch, w), ranks_(std::move(ranks)) {}
  const std::vector<int>& ranks() const noexcept { return ranks_; }

 private:
  std::vector<int> ranks_;
};

/// A collective did not complete in time; `culprits()` are the ranks it waits for.
class CollectiveTimeout : public Error {
 public:
  CollectiveTimeout(const std::string& w, std::vector<int> culprits)
      : Error(ErrorCode::kCollectiveTimeout, w), culprits_(std::move(culprits)) {}
  const std::vector<int>& culprits() const noexcept { return culprits_; }

 private:
  std::vector<int> culprits_;
};

/// A backend (CUDA, NCCL, MPI) was requested but is not built or not usable here.
class BackendUnavailable : public Error {
 public:
  explicit BackendUnavailable(const std::string& w) : Error(ErrorCode::kBackendUnavailable, w) {}
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace efcomm

/// Throw `ExcType` with a message built from the remaining arguments plus file:line when `cond`
/// is false. The one way efcomm code reports failures.
#define EFCOMM_CHECK_T(ExcType, cond, ...)                                                  \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      throw ExcType(::efcomm::detail::concat(__VA_ARGS__, " [", __FILE__, ":", __LINE__, "]")); \
    }                                                                                       \
  } while (0)
/// `EFCOMM_CHECK(cond, msg...)` throws `efcomm::InvalidArgument`.
#define EFCOMM_CHECK(cond, ...) EFCOMM_CHECK_T(::efcomm::InvalidArgument, cond, __VA_ARGS__)
/// Validation of bytes from the network: throws `efcomm::CorruptMessageError`.
#define EFCOMM_CHECK_MSG(cond, ...) EFCOMM_CHECK_T(::efcomm::CorruptMessageError, cond, __VA_ARGS__)
