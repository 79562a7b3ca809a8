// Bridge to ONNX Runtime through tools/onnxruntime/run.mjs (include/flexquant/onnxruntime.h).
#include "flexquant/onnxruntime.h"

#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "flexquant/error.h"

namespace flexquant {
namespace fs = std::filesystem;

torch::Tensor onnxruntime_run(const std::string& model, const torch::Tensor& input) {
  const char* env = std::getenv("FLEXQUANT_ONNXRUNTIME_DIR");
  const fs::path dir = env ? fs::path(env) : fs::path(FLEXQUANT_SOURCE_DIR) / "tools" / "onnxruntime";
  FQ_CHECK(fs::exists(dir / "node_modules" / "onnxruntime-node"), IoError, "ONNX Runtime (onnxruntime-node) is not "
           "installed in ", dir.string(), " -> run scripts/setup.sh (it runs npm ci there)");
  FQ_CHECK(fs::exists(model), IoError, "ONNX model \"", model, "\" does not exist");
  // A fresh directory per call: concurrent runs (threads, processes) never share scratch files.
  std::string templ = (fs::temp_directory_path() / "fq_ort_XXXXXX").string();
  FQ_CHECK(::mkdtemp(templ.data()) != nullptr, IoError, "cannot create a scratch directory under ",
           fs::temp_directory_path().string(), " for ONNX Runtime's input and output -> check TMPDIR");
  const fs::path tmp = templ;
  torch::Tensor x = input.detach().to(torch::kCPU, torch::kFloat).contiguous();
  {
    std::ofstream f(tmp / "in.f32", std::ios::binary);
    f.write(static_cast<const char*>(x.data_ptr()), static_cast<std::streamsize>(x.numel() * 4));
  }
  std::string dims;
  for (int64_t d : x.sizes()) dims += (dims.empty() ? "" : ",") + std::to_string(d);
  const std::string cmd = fmt::format("node '{}' '{}' '{}' {} '{}' > '{}' 2> '{}'", (dir / "run.mjs").string(), model,
                                      (tmp / "in.f32").string(), dims, (tmp / "out.f32").string(),
                                      (tmp / "meta.json").string(), (tmp / "err.txt").string());
  const int rc = std::system(cmd.c_str());
  std::stringstream meta, err;
  meta << std::ifstream(tmp / "meta.json").rdbuf();
  err << std::ifstream(tmp / "err.txt").rdbuf();
  torch::Tensor out;
  if (rc == 0) {
    auto shape = nlohmann::json::parse(meta.str()).at("dims").get<std::vector<int64_t>>();
    out = torch::empty(shape, torch::kFloat);
    std::ifstream f(tmp / "out.f32", std::ios::binary);
    f.read(static_cast<char*>(out.data_ptr()), static_cast<std::streamsize>(out.numel() * 4));
  }
  fs::remove_all(tmp);
  FQ_CHECK(rc == 0, IoError, "ONNX Runtime could not run \"", model, "\" (", cmd, " exited with ", rc, "): ", err.str());
  return out;
}

}  // namespace flexquant
