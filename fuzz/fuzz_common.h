// Shared by the libFuzzer targets (fuzz/fuzz_<reader>.cpp, built with -DFLEXQUANT_FUZZ=ON; scripts/fuzz.sh runs them).
//
// The contract every reader is fuzzed against: for any bytes, it returns or throws flexquant::Error (IoError,
// ModelError, ConfigError, NumericError). Anything else is a finding and aborts the process so libFuzzer saves the
// input: a sanitizer report (out-of-bounds, overflow, UB), a crash, a hang (-timeout), an allocation beyond
// -malloc_limit_mb / -rss_limit_mb, and any other exception escaping the reader (std::out_of_range, c10::Error,
// nlohmann::json errors...): those reach users as "internal error" messages that name neither file nor field.
#pragma once
#include <c10/util/Exception.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <typeinfo>

#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace fqfuzz {

/// A scratch folder per process on tmpfs (/dev/shm when present): readers that take a path read the input from
/// there. Removed at exit.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    const char* base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::filesystem::path d = std::filesystem::path(base) / ("fqfuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch(), ec);
    });
    return d;
  }();
  return dir;
}

/// Writes bytes to scratch()/name (sub-folders created) and returns the path.
inline std::string write_file(const std::string& name, const void* data, size_t size) {
  const std::filesystem::path p = scratch() / name;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) std::abort();  // the harness itself failed (tmpfs full?): not a finding about the reader
  return p.string();
}
inline std::string write_file(const std::string& name, const std::string& bytes) {
  return write_file(name, bytes.data(), bytes.size());
}

/// One-time set-up: one torch thread, no log lines.
inline void init() {
  at::set_num_threads(1);
  flexquant::set_log_level(flexquant::LogLevel::Error);
  (void)scratch();
}

[[noreturn]] inline void foreign(const char* type, const char* what) {
  std::fprintf(stderr, "\n==fqfuzz== reader let a %s escape instead of a flexquant::Error:\n%s\n", type, what);
  std::abort();
}

/// Runs `fn` (one reader call on the input): flexquant::Error is the reader refusing the input; anything else aborts.
template <class F>
void run(F&& fn) {
  try {
    fn();
  } catch (const flexquant::Error&) {
  } catch (const c10::Error& e) {
    foreign("c10::Error", e.what_without_backtrace());
  } catch (const std::exception& e) {
    foreign(typeid(e).name(), e.what());
  }
}

/// Splits `data` at the first occurrence of `sep`: {before, after}; after is empty when sep is absent.
inline std::pair<std::string, std::string> split(const uint8_t* data, size_t size, const std::string& sep) {
  const std::string s(reinterpret_cast<const char*>(data), size);
  const auto at = s.find(sep);
  if (at == std::string::npos) return {s, ""};
  return {s.substr(0, at), s.substr(at + sep.size())};
}

}  // namespace fqfuzz
