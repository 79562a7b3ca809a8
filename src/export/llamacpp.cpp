// Bridge to llama.cpp through tools/llamacpp/eval.mjs (include/flexquant/llamacpp.h).
#include "flexquant/llamacpp.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <unistd.h>

#include "flexquant/error.h"

namespace flexquant {
namespace fs = std::filesystem;

double LlamaCppResult::ppl() const { return std::exp(nll()); }

std::string llamacpp_script() {
  const char* env = std::getenv("FLEXQUANT_LLAMACPP_DIR");
  fs::path dir = env ? fs::path(env) : fs::path(FLEXQUANT_SOURCE_DIR) / "tools" / "llamacpp";
  FQ_CHECK(fs::exists(dir / "node_modules" / "node-llama-cpp"), IoError, "llama.cpp (node-llama-cpp) is not installed in ",
           dir.string(), " -> run scripts/setup.sh (it runs npm ci there)");
  return (dir / "eval.mjs").string();
}

namespace {

// Runs eval.mjs on `gguf` with the request; its JSON answer.
nlohmann::json ask_llamacpp(const std::string& gguf, const nlohmann::json& req) {
  FQ_CHECK(fs::exists(gguf), IoError, "GGUF file \"", gguf, "\" does not exist");
  const std::string script = llamacpp_script();
  const fs::path tmp = fs::temp_directory_path() / fmt::format("fq_llamacpp_{}", static_cast<long>(::getpid()));
  fs::create_directories(tmp);
  const std::string req_path = (tmp / "request.json").string(), out_path = (tmp / "result.json").string(),
                    err_path = (tmp / "stderr.txt").string();
  std::ofstream(req_path) << req.dump();
  const std::string cmd = fmt::format("node '{}' '{}' '{}' > '{}' 2> '{}'", script, gguf, req_path, out_path, err_path);
  const int rc = std::system(cmd.c_str());
  std::stringstream out, err;
  out << std::ifstream(out_path).rdbuf();
  err << std::ifstream(err_path).rdbuf();
  fs::remove_all(tmp);
  FQ_CHECK(rc == 0, IoError, "llama.cpp could not evaluate \"", gguf, "\" (", cmd, " exited with ", rc, "): ", err.str());
  try {
    return nlohmann::json::parse(out.str());
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("llama.cpp's answer for \"{}\" is not readable ({}): {}", gguf, e.what(), out.str()));
  }
}

}  // namespace

LlamaCppResult llamacpp_evaluate(const std::string& gguf, const torch::Tensor& stream_in, const PplProtocol& protocol,
                                 int64_t greedy_steps, int threads) {
  nlohmann::json req;
  req["greedy_steps"] = greedy_steps;
  req["threads"] = threads;
  req["windows"] = nlohmann::json::array();
  if (stream_in.defined() && stream_in.numel() > 0) {
    torch::Tensor stream = ppl_stream(stream_in, protocol).contiguous();
    const int64_t* ids = stream.data_ptr<int64_t>();
    for (const PplWindow& w : ppl_windows(stream.size(0), protocol))
      req["windows"].push_back({{"ids", std::vector<int64_t>(ids + w.s, ids + w.e)}, {"first", w.lo - w.s - 1}});
  }
  const nlohmann::json j = ask_llamacpp(gguf, req);
  LlamaCppResult r;
  try {
    r.nll_sum = j.at("nll_sum");
    r.scored = j.at("scored");
    r.greedy = j.at("greedy").get<std::vector<int32_t>>();
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("llama.cpp's answer for \"{}\" lacks a field ({}): {}", gguf, e.what(), j.dump()));
  }
  return r;
}

std::vector<std::vector<int32_t>> llamacpp_tokenize(const std::string& gguf, const std::vector<std::string>& texts) {
  const nlohmann::json j = ask_llamacpp(gguf, {{"texts", texts}});
  try {
    return j.at("tokens").get<std::vector<std::vector<int32_t>>>();
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("llama.cpp's tokens for \"{}\" are not readable ({}): {}", gguf, e.what(), j.dump()));
  }
}

}  // namespace flexquant
