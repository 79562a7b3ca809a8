// End-to-end through the binary: quantize the real ResNet-20 and stories260K with few iterations, reload with
// `flexquant eval`, and check accuracy/perplexity against floors measured once (recorded below) and bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli_runner.h"
#include "flexquant/safetensors.h"
#include "test_data.h"

using flexquant::testing::run_cli;
using flexquant::testing::shared_path;

namespace {
double number_after(const std::string& text, const std::string& label) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(label + R"( = ([0-9.]+))"))) return -1;
  return std::stod(m[1]);
}
}  // namespace

TEST(CliQuantize, ResNet20FlexRoundW4A4ThenEvalReproduces) {
  auto out = (std::filesystem::temp_directory_path() / "fq_cli_r20.fqz").string();
  std::string common = " --data cifar10:" + shared_path("data/cifar10") + " --eval-limit 1000";
  auto q = run_cli("quantize --model " + shared_path("data/cifar10/resnet20.safetensors") +
                   " --arch resnet_cifar --recipe recipes/flexround-w4a4.json --recon.iters 40 --calib.samples 256"
                   " --out " + out + common);
  ASSERT_EQ(q.code, 0) << q.out;
  EXPECT_NE(q.out.find("[11/11] linear"), std::string::npos) << "progress lines missing";
  auto e = run_cli("eval --model " + out + common);
  ASSERT_EQ(e.code, 0) << e.out;
  double acc = number_after(e.out, "top-1 %");
  // Floor measured once: 40 iterations, 256 calibration images gave 78.4 % on records 1024-2023 (FP 81.5 %).
  EXPECT_GT(acc, 76.0) << e.out;
  // The number stored at quantization time is reproduced exactly by the reload.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(e.out, m, std::regex(R"(at quantization time: top-1 % ([0-9.]+))"))) << e.out;
  EXPECT_NEAR(std::stod(m[1]), acc, 1e-4);
  std::filesystem::remove(out);
}

// The ONNX path end to end: an .onnx in, QDQ .onnx out; flexquant and ONNX Runtime evaluate the exported file alike
// and as flexquant evaluated it at quantization; an .fqz of the same run reloads onto the .onnx source.
TEST(CliQuantize, OnnxInQdqOnnxOutEvaluatedByOnnxRuntime) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("fq_cli_onnx_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string common = " --data cifar10:" + shared_path("data/cifar10") + " --split 256 --eval-limit 500";
  const std::string model = shared_path("data/cifar10/resnet20.onnx");
  auto q = run_cli("quantize --model " + model + " --recipe recipes/flexround-w4a4.json --recon.iters 10"
                   " --calib.samples 128 --out " + (dir / "q.onnx").string() + common);
  ASSERT_EQ(q.code, 0) << q.out;
  EXPECT_NE(q.out.find("records 256-755"), std::string::npos) << "--split did not move the evaluation set: " << q.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(q.out, m, std::regex(R"(\| flexround W4A4 \| ([0-9.]+) \|)"))) << q.out;
  const double at_quantization = std::stod(m[1]);
  auto ours = run_cli("eval --model " + (dir / "q.onnx").string() + common);
  auto ort = run_cli("eval --model " + (dir / "q.onnx").string() + " --runtime onnxruntime" + common);
  ASSERT_EQ(ours.code, 0) << ours.out;
  ASSERT_EQ(ort.code, 0) << ort.out;
  EXPECT_NEAR(number_after(ours.out, "flexquant top-1 %"), at_quantization, 0.1 + 1e-9) << ours.out;
  EXPECT_NEAR(number_after(ort.out, "onnxruntime top-1 %"), at_quantization, 0.1 + 1e-9) << ort.out;
  // A QDQ file is written only from an ONNX source.
  auto bad = run_cli("quantize --model " + shared_path("data/cifar10/resnet20.safetensors") + " --arch resnet_cifar"
                     " --recipe recipes/rtn-w4a4.json --calib.samples 64 --out " + (dir / "x.onnx").string() + common);
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("QDQ ONNX is written from an ONNX source model"), std::string::npos) << bad.out;
  fs::remove_all(dir);
}

// Ctrl-C during a long run: the process stops cleanly (exit 130) keeping its finished units; the same command with
// --resume finishes the job from the checkpoint and removes it.
TEST(CliQuantize, SigintStopsCleanlyAndResumeFinishes) {
  namespace fs = std::filesystem;
  const char* cli = std::getenv("FLEXQUANT_CLI");
  ASSERT_NE(cli, nullptr) << "FLEXQUANT_CLI is not set";
  const auto out = fs::temp_directory_path() / ("fq_cli_sigint_" + std::to_string(::getpid()) + ".fqz");
  const std::string args = "quantize --model " + shared_path("data/cifar10/resnet20.safetensors") +
                           " --arch resnet_cifar --recipe recipes/flexround-w4a4.json --recon.iters 30 --calib.samples 64"
                           " --data cifar10:" + shared_path("data/cifar10") + " --eval-limit 300 --out " + out.string();
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::execl("/bin/sh", "sh", "-c", ("exec '" + std::string(cli) + "' " + args).c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string text, line;
  bool sent = false;
  char c;
  while (::read(fds[0], &c, 1) == 1) {
    text += c;
    if (c != '\n') { line += c; continue; }
    if (!sent && line.find("[ 2/11]") != std::string::npos && line.find("done") != std::string::npos) {
      ::kill(child, SIGINT);
      sent = true;
    }
    line.clear();
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(sent) << text;
  ASSERT_TRUE(WIFEXITED(status)) << text;
  EXPECT_EQ(WEXITSTATUS(status), 130) << text;
  EXPECT_NE(text.find("stopped on request"), std::string::npos) << text;
  EXPECT_NE(text.find("--resume"), std::string::npos) << text;
  EXPECT_TRUE(fs::exists(out.string() + ".ckpt"));
  EXPECT_FALSE(fs::exists(out));
  auto r = run_cli(args + " --resume");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(resuming after unit [23]/11)"))) << r.out;
  EXPECT_TRUE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".ckpt"));
  fs::remove(out);
}

// --deterministic: the same .fqz tensors, bit for bit, at --threads 1 and --threads 2 (the LSQ steps, learned
// codes and every float the file holds; only timing metadata may differ).
TEST(CliQuantize, DeterministicGivesTheSameFileAtAnyThreadCount) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("fq_cli_det_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string args = " quantize --model " + shared_path("data/cifar10/resnet20.safetensors") +
                           " --arch resnet_cifar --recipe recipes/flexround-qdrop-w4a4.json --recon.iters 8"
                           " --calib.samples 64 --data cifar10:" + shared_path("data/cifar10") + " --eval-limit 200 --out ";
  auto a = run_cli("--threads 1 --deterministic" + args + (dir / "a.fqz").string());
  auto b = run_cli("--threads 2 --deterministic" + args + (dir / "b.fqz").string());
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("1 threads (deterministic)"), std::string::npos) << b.out;
  auto fa = flexquant::load_safetensors((dir / "a.fqz").string()), fb = flexquant::load_safetensors((dir / "b.fqz").string());
  ASSERT_EQ(fa.names, fb.names);
  for (const auto& n : fa.names) EXPECT_TRUE(torch::equal(fa.at(n), fb.at(n))) << n;
  EXPECT_EQ(fa.metadata.at("activations"), fb.metadata.at("activations"));
  fs::remove_all(dir);
}

TEST(CliQuantize, Stories260KFlexRoundW4) {
  auto out = (std::filesystem::temp_directory_path() / "fq_cli_lm.fqz").string();
  std::string common = " --data " + shared_path("data/lm/tinystories_valid_first.txt") + " --eval-limit 3000";
  // One thread: this model is tiny and OpenMP spinning on a busy 2-core machine costs 10x.
  auto q = run_cli("--threads 1 quantize --model " + shared_path("data/lm/stories260K.bin") +
                   " --recipe recipes/llm-flexround-w4.json --recon.iters 30 --calib.samples 16 --out " + out + common);
  ASSERT_EQ(q.code, 0) << q.out;
  auto e = run_cli("--threads 1 eval --model " + out + common);
  ASSERT_EQ(e.code, 0) << e.out;
  double ppl = number_after(e.out, "perplexity");
  // FP perplexity on this split is ~4.4; W4 per-channel after 30 iterations measured 4.6 once.
  EXPECT_GT(ppl, 4.0);
  EXPECT_LT(ppl, 5.5) << e.out;
  std::filesystem::remove(out);
}

TEST(CliQuantize, BadInputGetsClearErrors) {
  auto r = run_cli("quantize --model /nonexistent.safetensors --arch resnet_cifar --data cifar10:/tmp");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("/nonexistent.safetensors"), std::string::npos) << r.out;
  r = run_cli("quantize --model " + shared_path("data/cifar10/resnet20.safetensors") + " --arch resnet_cifar --data cifar10:" +
              shared_path("data/cifar10") + " --set weight.bitz=4");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("did you mean \"weight.bits\""), std::string::npos) << r.out;
  r = run_cli("quantize --model " + shared_path("data/cifar10/resnet20.safetensors") + " --arch resnet99 --data cifar10:" +
              shared_path("data/cifar10"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("resnet_cifar"), std::string::npos) << r.out;  // lists the valid archs
  r = run_cli("quantize --model " + shared_path("data/cifar10/resnet20.safetensors") + " --arch resnet_cifar --data cifar10:" +
              shared_path("data/cifar10") + " --weight.bits 9 --dry-run");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("weight.bits 9"), std::string::npos) << r.out;
  r = run_cli("eval --model recipes/rtn-w4a4.json --data cifar10:/tmp");
  EXPECT_NE(r.code, 0);
  // A validation slice past the end of the evaluation text is refused, naming the flag.
  r = run_cli("--threads 1 compare --model " + shared_path("data/lm/stories260K.bin") + " --data " +
              shared_path("data/lm/tinystories_valid_first.txt") + " --recipe recipes/llm-rtn-w4.json --eval-skip 10000000");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--eval-skip"), std::string::npos) << r.out;
  r = run_cli("compare --model " + shared_path("data/lm/stories260K.bin") + " --data " +
              shared_path("data/lm/tinystories_valid_first.txt") + " --recipe recipes/llm-rtn-w4.json --eval-skip -5");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--eval-skip -5 -> allowed >= 0"), std::string::npos) << r.out;
}

// An --out the run could not write is refused before any unit is quantized (not after the whole run): a missing
// folder and one that is not writable (root may write anywhere, so that case needs a non-root user).
TEST(CliQuantize, UnwritableOutIsRefusedBeforeAnyWork) {
  const std::string common = "--threads 1 quantize --model " + shared_path("data/cifar10/resnet20.safetensors") +
                             " --arch resnet_cifar --data cifar10:" + shared_path("data/cifar10") +
                             " --recipe recipes/flexround-w4a4.json --set recon.iters=50";
  auto r = run_cli(common + " --out /nonexistent_fq_dir/r20.fqz");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("/nonexistent_fq_dir"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("does not exist"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("[ 1/11]"), std::string::npos) << "a unit ran before the refusal:\n" << r.out;
  if (::geteuid() != 0) {
    const std::string dir = ::testing::TempDir() + "fq_readonly_" + std::to_string(::getpid());
    std::filesystem::create_directories(dir);
    std::filesystem::permissions(dir, std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
    r = run_cli(common + " --out " + dir + "/r20.fqz");
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all);
    std::filesystem::remove_all(dir);
    EXPECT_NE(r.out.find("is not writable"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("[ 1/11]"), std::string::npos) << r.out;
  }
}

// The GGUF path through the binary: an .fqz on Q8_0's grid exported with `flexquant export`, then evaluated from the
// .gguf by flexquant (the same perplexity as the .fqz: the blocks hold the evaluated codes) and by llama.cpp.
TEST(CliExport, FqzToGgufThenEvalByFlexquantAndLlamaCpp) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string fqz = (dir / "fq_cli_q8.fqz").string(), gguf = (dir / "fq_cli_q8.gguf").string();
  const std::string common = " --data " + shared_path("data/lm/tinystories_valid_first.txt") + " --eval-limit 3000";
  auto q = run_cli("--threads 1 quantize --model " + shared_path("data/lm/stories260K.bin") +
                   " --recipe recipes/llm-flexround-q4_0.json --set weight.bits=8 --recon.iters 10 --calib.samples 8"
                   " --out " + fqz + common);
  ASSERT_EQ(q.code, 0) << q.out;
  auto x = run_cli("export --model " + fqz + " --to gguf --out " + gguf);
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("blk.0.attn_q.weight"), std::string::npos) << x.out;
  EXPECT_NE(x.out.find("q8_0"), std::string::npos) << x.out;
  auto e_fqz = run_cli("--threads 1 eval --model " + fqz + common);
  auto e_fq = run_cli("--threads 1 eval --model " + gguf + common);
  auto e_lc = run_cli("--threads 1 eval --model " + gguf + common + " --runtime llama.cpp");
  ASSERT_EQ(e_fq.code, 0) << e_fq.out;
  ASSERT_EQ(e_lc.code, 0) << e_lc.out;
  const double p_fqz = number_after(e_fqz.out, "perplexity"), p_fq = number_after(e_fq.out, "flexquant perplexity"),
               p_lc = number_after(e_lc.out, "llama.cpp perplexity");
  EXPECT_GT(p_fq, 0);
  EXPECT_LT(std::abs(p_fq / p_fqz - 1), 1e-3) << e_fq.out << e_fqz.out;  // ffn_down: f16 fallback
  EXPECT_LT(std::abs(p_lc / p_fq - 1), 0.01) << e_lc.out;
  auto bad = run_cli("export --model " + fqz + " --to tflite --out " + gguf);
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("gguf"), std::string::npos) << bad.out;
  std::filesystem::remove(fqz);
  std::filesystem::remove(gguf);
}
