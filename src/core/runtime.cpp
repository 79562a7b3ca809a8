#include "flexquant/runtime.h"

#include "flexquant/error.h"

#include <dlfcn.h>
#include <malloc.h>
#include <fmt/format.h>
#include <torch/types.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <atomic>
#include <csignal>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>

namespace flexquant {

const char* version() { return FLEXQUANT_VERSION; }

namespace {
LogLevel g_level = LogLevel::Info;
std::function<void(LogLevel, const std::string&)> g_sink;
std::mutex g_log_mutex;
}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }
void set_log_sink(std::function<void(LogLevel, const std::string&)> sink) { g_sink = std::move(sink); }

void log(LogLevel level, const std::string& msg) {
  if (static_cast<int>(level) > static_cast<int>(g_level)) return;
  std::lock_guard<std::mutex> lock(g_log_mutex);
  if (g_sink) {
    g_sink(level, msg);
    return;
  }
  const char* prefix = level == LogLevel::Error ? "error: " : level == LogLevel::Warn ? "warning: " : "";
  std::cerr << prefix << msg << std::endl;
}

std::string blas_info() {
  // openblas_get_config only exists in OpenBLAS; its absence means the reference BLAS (or another).
  using cfg_fn = char* (*)();
  void* self = dlopen(nullptr, RTLD_NOW);
  auto fn = self ? reinterpret_cast<cfg_fn>(dlsym(self, "openblas_get_config")) : nullptr;
  if (!fn) {
    void* h = dlopen("libblas.so.3", RTLD_NOW | RTLD_NOLOAD);
    if (h) fn = reinterpret_cast<cfg_fn>(dlsym(h, "openblas_get_config"));
  }
  if (!fn) return "reference";
  return std::string("OpenBLAS ") + fn();
}

namespace {
volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop_signal(int sig) {
  if (g_stop) {  // the second signal: the user means it
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
  g_stop = 1;
}
}  // namespace

void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}
void request_stop() { g_stop = 1; }
bool stop_requested() { return g_stop != 0; }
void clear_stop_request() { g_stop = 0; }
void throw_if_stop_requested(const std::string& where) {
  if (g_stop) throw InterruptedError("stopped on request (SIGINT/SIGTERM) " + where);
}

namespace {
bool g_deterministic = false;
}

void enable_deterministic() {
  at::set_num_threads(1);
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/true);
  g_deterministic = true;
}
bool deterministic() { return g_deterministic; }

std::string init_runtime(int threads) {
  static std::once_flag once;
  static std::string info;
  std::call_once(once, [&] {
    int n = threads;
    // FLEXQUANT_THREADS lets a test run or a second job on a shared machine stay off the busy cores:
    // OpenMP threads that wait on a descheduled sibling make small-op workloads several times slower.
    if (n <= 0) {
      if (const char* env = std::getenv("FLEXQUANT_THREADS")) {
        n = std::atoi(env);
        if (n <= 0) log_warn(std::string("FLEXQUANT_THREADS=\"") + env + "\" is not a positive integer; using all cores");
      }
    }
    if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
    if (n < 1) n = 1;
    at::set_num_threads(n);
    // glibc returns every large freed tensor to the OS and page-faults it back on the next allocation;
    // for many mid-sized tensors (LM evaluation, reconstruction steps) that was 10x slower, mostly system time.
    // 32 MiB is the largest threshold glibc accepts (HEAP_MAX_SIZE / 2); a larger value is refused and, since
    // M_TRIM_THRESHOLD also turns off the dynamic threshold, left every tensor over 128 KiB on mmap.
    if (mallopt(M_MMAP_THRESHOLD, 32 << 20) != 1) log_warn("mallopt(M_MMAP_THRESHOLD) refused: large tensors stay on mmap");
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    info = blas_info();
    if (info == "reference") {
      log_warn(
          "the reference BLAS is loaded: matrix products run ~20x slower. Fix: apt-get install "
          "libopenblas0-openmp (scripts/setup.sh does it)");
    } else if (info.find("USE_OPENMP") == std::string::npos) {
      log_warn("OpenBLAS without OpenMP is loaded (" + info +
               "); its threads fight libtorch's OpenMP pool (~3x slower). Fix: scripts/setup.sh");
    }
  });
  return info;
}

namespace {
std::atomic<long long> g_peak_before_reset{0};
}  // namespace

long long window_peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

long long peak_rss_bytes() { return std::max(g_peak_before_reset.load(), window_peak_rss_bytes()); }

bool reset_peak_rss() {
  long long p = peak_rss_bytes();
  long long prev = g_peak_before_reset.load();
  while (p > prev && !g_peak_before_reset.compare_exchange_weak(prev, p)) {}
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return f.good();
}

std::string format_duration(double s) {
  if (s < 60) return fmt::format("{:.1f}s", s);
  int m = static_cast<int>(s / 60);
  return fmt::format("{}m{:02d}s", m, static_cast<int>(s - 60 * m));
}

}  // namespace flexquant
