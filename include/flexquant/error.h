// Typed errors. The library never exits: it throws one of these, and the CLI maps the type to an exit
// code. Messages follow one shape: what is wrong -> the offending value -> what is allowed -> a hint.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace flexquant {

enum class ErrorKind { Config, Io, Model, Numeric, Internal, Interrupted };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  /// Exit code the CLI uses: 2 usage/recipe, 3 I/O, 4 model, 5 numeric, 70 internal, 130 stopped by a signal.
  int exit_code() const;

 private:
  ErrorKind kind_;
};

struct ConfigError : Error { explicit ConfigError(const std::string& m) : Error(ErrorKind::Config, m) {} };
struct IoError : Error { explicit IoError(const std::string& m) : Error(ErrorKind::Io, m) {} };
struct ModelError : Error { explicit ModelError(const std::string& m) : Error(ErrorKind::Model, m) {} };
struct NumericError : Error { explicit NumericError(const std::string& m) : Error(ErrorKind::Numeric, m) {} };
/// A stop was requested (SIGINT/SIGTERM, request_stop()): the work stopped cleanly between two steps.
struct InterruptedError : Error { explicit InterruptedError(const std::string& m) : Error(ErrorKind::Interrupted, m) {} };
struct InternalError : Error {
  explicit InternalError(const std::string& m) : Error(ErrorKind::Internal, m + " (this is a flexquant bug, please report it)") {}
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace flexquant

/// FQ_CHECK(cond, ErrorType, "what ", value, " allowed ...; hint: ...") throws ErrorType when cond fails.
#define FQ_CHECK(cond, ErrorType, ...)                                              \
  do {                                                                              \
    if (!(cond)) throw ::flexquant::ErrorType(::flexquant::detail::concat(__VA_ARGS__)); \
  } while (0)

/// Invariants the user cannot break; failing one is a bug.
#define FQ_INTERNAL_ASSERT(cond, ...)                                                              \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      throw ::flexquant::InternalError(::flexquant::detail::concat(                                \
          __FILE__, ":", __LINE__, ": assertion `" #cond "` failed. ", ##__VA_ARGS__));            \
  } while (0)
