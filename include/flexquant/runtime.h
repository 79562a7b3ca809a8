// Process-wide set-up: thread count, BLAS check, logging and progress output.
#pragma once
#include <chrono>
#include <functional>
#include <string>

namespace flexquant {

/// Library version string, e.g. "0.1.0".
const char* version();

/// `git describe --always --dirty` of the source tree this library was built from (refreshed at every build), so a
/// result can name its code: "4e6d53c1a2b3", "4e6d53c1a2b3-dirty", or "unknown (...)" outside a git checkout.
const char* build_commit();

/// Call once at start-up. Sets torch's intra-op thread count (0 = $FLEXQUANT_THREADS if set, else all cores;
/// libtorch's default is half of them), and checks which BLAS is loaded: warns loudly if it is the reference BLAS or the
/// pthread OpenBLAS. Returns a one-line description of the BLAS in use.
std::string init_runtime(int threads = 0);

/// Stopping long work cleanly. install_stop_handlers() makes the first SIGINT/SIGTERM request a stop (a second one
/// ends the process at once); long loops call throw_if_stop_requested() between steps, which throws InterruptedError
/// naming `where`, so finished work (checkpoints, written files) stays and nothing is left half-written.
void install_stop_handlers();
void request_stop();
bool stop_requested();
void clear_stop_request();
void throw_if_stop_requested(const std::string& where);

/// Results that do not depend on the thread count: LibTorch's parallel reductions (conv weight gradients, sums)
/// split their work by thread count, so the same seed gives different last bits, and after reconstruction
/// different codes, at 1 and 2 threads. This runs every op on one thread (and asks LibTorch for deterministic
/// algorithms, which matters on CUDA), so the output is the same bytes whatever --threads says; the cost is the
/// parallel speed-up (docs/RESULTS.md "Reproducibility"). Sharded units (language-model layers) already run the
/// engine in single-threaded pieces of fixed shape and store the same model at any thread count without it; CNN
/// blocks, whose convolutions stay multi-threaded, need it. Call after init_runtime.
void enable_deterministic();
bool deterministic();

/// Name and config of the BLAS library actually loaded ("OpenBLAS 0.3.21 ... USE_OPENMP" or "reference").
std::string blas_info();

enum class LogLevel { Error = 0, Warn = 1, Info = 2, Debug = 3 };
void set_log_level(LogLevel level);
LogLevel log_level();
/// Replace the sink (default: stderr). The CLI and tests use this to capture output.
void set_log_sink(std::function<void(LogLevel, const std::string&)> sink);
void log(LogLevel level, const std::string& msg);
inline void log_info(const std::string& m) { log(LogLevel::Info, m); }
inline void log_warn(const std::string& m) { log(LogLevel::Warn, m); }
inline void log_debug(const std::string& m) { log(LogLevel::Debug, m); }

/// Wall-clock stopwatch in seconds.
class Stopwatch {
 public:
  Stopwatch() : t0_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  void reset() { t0_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

/// Peak resident set size of this process in bytes since start (VmHWM, folded over reset_peak_rss calls).
long long peak_rss_bytes();

/// Starts a new peak-RSS window (Linux clear_refs "5"); returns false where the kernel does not allow it.
/// window_peak_rss_bytes() then reads the peak since this call; peak_rss_bytes() still covers the whole run.
bool reset_peak_rss();
long long window_peak_rss_bytes();

/// Formats seconds as "12.3s" / "4m05s".
std::string format_duration(double seconds);

}  // namespace flexquant
