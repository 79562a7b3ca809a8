// Language-model evaluation: paragraph corpus + token cache, windowed perplexity (mean next-token NLL, as in
// llama2.c's validation loss and HF's "perplexity of fixed-length models" guide), calibration sampling and
// greedy decoding. All forwards go through a UnitContext so quantized models share this code path.
#include "flexquant/lm_eval.h"

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace fs = std::filesystem;

namespace flexquant {

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  FQ_CHECK(f.good(), IoError, "cannot open text file -> ", path, " -> expected a readable UTF-8 text file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(ws);
  return s.substr(a, b - a + 1);
}

std::vector<std::string> split_paragraphs(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(text);
  std::string line;
  auto flush = [&] {
    std::string t = trim(cur);
    if (!t.empty()) out.push_back(t);
    cur.clear();
  };
  while (std::getline(in, line)) {
    if (trim(line).empty()) {
      flush();
    } else {
      if (!cur.empty()) cur += '\n';
      cur += line;
    }
  }
  flush();
  return out;
}

std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

constexpr char kTokMagic[8] = {'F', 'Q', 'T', 'O', 'K', '0', '0', '1'};

bool read_tok_cache(const fs::path& p, std::vector<std::vector<int32_t>>& out) {
  std::ifstream f(p, std::ios::binary);
  if (!f.good()) return false;
  char magic[8];
  uint64_t n = 0;
  if (!f.read(magic, 8) || std::memcmp(magic, kTokMagic, 8) != 0 || !f.read(reinterpret_cast<char*>(&n), 8)) return false;
  out.assign(n, {});
  for (auto& para : out) {
    int32_t len = 0;
    if (!f.read(reinterpret_cast<char*>(&len), 4) || len < 0) return false;
    para.resize(static_cast<size_t>(len));
    if (!f.read(reinterpret_cast<char*>(para.data()), static_cast<std::streamsize>(len) * 4)) return false;
  }
  return true;
}

void write_tok_cache(const fs::path& p, const std::vector<std::vector<int32_t>>& paras) {
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  fs::path tmp = p;
  tmp += ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f.good()) {
      log_warn("cannot write token cache " + tmp.string() + "; continuing without it");
      return;
    }
    uint64_t n = paras.size();
    f.write(kTokMagic, 8);
    f.write(reinterpret_cast<const char*>(&n), 8);
    for (auto& para : paras) {
      int32_t len = static_cast<int32_t>(para.size());
      f.write(reinterpret_cast<const char*>(&len), 4);
      f.write(reinterpret_cast<const char*>(para.data()), static_cast<std::streamsize>(len) * 4);
    }
  }
  fs::rename(tmp, p, ec);
}

}  // namespace

std::vector<std::string> read_paragraphs(const std::string& path) { return split_paragraphs(read_file(path)); }

const std::vector<std::vector<int32_t>>& tokenize_paragraphs(const std::string& path, const Tokenizer& tok,
                                                             const std::string& cache_dir) {
  static std::mutex mu;
  static std::map<std::pair<uint64_t, uint64_t>, std::vector<std::vector<int32_t>>> cache;
  std::string text = read_file(path);
  const auto key = std::make_pair(fnv1a64(text.data(), text.size()), tok.hash());
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;

  std::vector<std::vector<int32_t>> paras;
  fs::path disk;
  if (!cache_dir.empty()) {
    disk = fs::path(cache_dir) / (hex64(key.first) + "-" + hex64(key.second) + ".tok");
    if (read_tok_cache(disk, paras)) {
      log_debug("token cache hit " + disk.string());
      return cache.emplace(key, std::move(paras)).first->second;
    }
    paras.clear();
  }
  Stopwatch sw;
  for (const std::string& p : split_paragraphs(text)) paras.push_back(tok.encode(p, /*bos=*/false));
  size_t n = 0;
  for (auto& p : paras) n += p.size();
  log_info("tokenized " + path + ": " + std::to_string(paras.size()) + " paragraphs, " + std::to_string(n) +
           " tokens in " + format_duration(sw.seconds()));
  if (!disk.empty()) write_tok_cache(disk, paras);
  return cache.emplace(key, std::move(paras)).first->second;
}

torch::Tensor corpus_tokens(const std::string& path, const Tokenizer& tok, const CorpusRange& range,
                            const std::string& cache_dir) {
  const auto& paras = tokenize_paragraphs(path, tok, cache_dir);
  const int64_t np = static_cast<int64_t>(paras.size());
  const int64_t last = range.last_paragraph < 0 ? np : range.last_paragraph;
  FQ_CHECK(range.first_paragraph >= 0 && range.first_paragraph < last && last <= np, ConfigError,
           "paragraph range [", range.first_paragraph, ", ", range.last_paragraph, ") of ", path, " -> allowed 0 <= first < last <= ",
           np, " (-1 = end); hint: the file has ", np, " blank-line-separated paragraphs");
  std::vector<int64_t> ids;
  if (!range.bos_per_paragraph) ids.push_back(Tokenizer::kBos);
  for (int64_t i = range.first_paragraph; i < last; ++i) {
    if (range.bos_per_paragraph) ids.push_back(Tokenizer::kBos);
    ids.insert(ids.end(), paras[i].begin(), paras[i].end());
  }
  return torch::tensor(ids, torch::kLong);
}

std::string PplProtocol::describe() const {
  std::ostringstream s;
  s << "window " << window << ", stride " << stride << ", "
    << (range.bos_per_paragraph ? "BOS per paragraph" : "one BOS at start") << ", paragraphs [" << range.first_paragraph
    << ", " << (range.last_paragraph < 0 ? std::string("end") : std::to_string(range.last_paragraph)) << "), "
    << (skip_tokens > 0 ? "after skipping " + std::to_string(skip_tokens) + " tokens, " : std::string())
    << (max_tokens > 0 ? "first " + std::to_string(max_tokens) + " tokens" : std::string("all tokens"))
    << ", mean next-token NLL over tokens with context in their window";
  return s.str();
}

void PplProtocol::validate() const {
  FQ_CHECK(window >= 2, ConfigError, "ppl window ", window, " -> allowed >= 2");
  FQ_CHECK(stride >= 1 && stride <= window, ConfigError, "ppl stride ", stride, " -> allowed 1..window (", window, ")");
  FQ_CHECK(max_tokens >= 0, ConfigError, "ppl max_tokens ", max_tokens, " -> allowed >= 0 (0 = all)");
  FQ_CHECK(skip_tokens >= 0, ConfigError, "ppl skip_tokens ", skip_tokens, " -> allowed >= 0");
  FQ_CHECK(batch >= 1, ConfigError, "ppl batch ", batch, " -> allowed >= 1");
}

torch::Tensor ppl_stream(const torch::Tensor& stream_in, const PplProtocol& protocol) {
  protocol.validate();
  FQ_CHECK(stream_in.dim() == 1 && stream_in.size(0) >= 2, ConfigError, "perplexity stream shape ", stream_in.sizes(),
           " -> expected a 1-D token stream of >= 2 tokens");
  torch::Tensor stream = stream_in.to(torch::kLong);
  FQ_CHECK(stream.size(0) - protocol.skip_tokens >= 2, ConfigError, "the evaluation text has ", stream.size(0),
           " tokens, and skipping ", protocol.skip_tokens, " leaves fewer than 2 -> lower the skip (--eval-skip)");
  stream = stream.slice(0, protocol.skip_tokens);
  if (protocol.max_tokens > 0 && stream.size(0) > protocol.max_tokens) stream = stream.slice(0, 0, protocol.max_tokens);
  return stream;
}

std::vector<PplWindow> ppl_windows(int64_t N, const PplProtocol& protocol) {
  std::vector<PplWindow> wins;
  int64_t scored_until = 1;
  for (int64_t s = 0; s < N - 1; s += protocol.stride) {
    int64_t e = std::min(s + protocol.window, N);
    int64_t lo = std::max(s + 1, scored_until);
    if (lo < e) wins.push_back({s, e, lo});
    scored_until = std::max(scored_until, e);
    if (e == N) break;
  }
  return wins;
}

namespace {

// NLL [T-1] of every next-token prediction of windows [i, j), all of length T, from one batched forward.
std::vector<torch::Tensor> window_nll(ModelAdapter& model, const torch::Tensor& stream,
                                      const std::vector<PplWindow>& wins, size_t i, size_t j, UnitContext& ctx,
                                      torch::Device dev) {
  const int64_t T = wins[i].e - wins[i].s;
  std::vector<torch::Tensor> rows;
  for (size_t k = i; k < j; ++k) rows.push_back(stream.slice(0, wins[k].s, wins[k].e));
  torch::Tensor x = torch::stack(rows).to(dev);                                                 // [b, T]
  torch::Tensor logp = torch::log_softmax(model.forward(x, ctx).to(torch::kFloat32), -1);        // [b, T, V]
  torch::Tensor nll = -logp.slice(1, 0, T - 1).gather(2, x.slice(1, 1, T).unsqueeze(-1)).squeeze(-1);  // [b, T-1]
  nll = nll.to(torch::kCPU, torch::kFloat64);
  std::vector<torch::Tensor> out;
  for (size_t k = i; k < j; ++k) out.push_back(nll[static_cast<int64_t>(k - i)]);
  return out;
}

// Consecutive windows of the same length batched `batch` at a time, on the threads LibTorch has.
std::vector<torch::Tensor> nll_batched(ModelAdapter& model, const torch::Tensor& stream,
                                       const std::vector<PplWindow>& wins, int64_t batch, UnitContext& ctx,
                                       torch::Device dev) {
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < wins.size();) {
    size_t j = i;
    const int64_t T = wins[i].e - wins[i].s;
    while (j < wins.size() && static_cast<int64_t>(j - i) < batch && wins[j].e - wins[j].s == T) ++j;
    for (auto& t : window_nll(model, stream, wins, i, j, ctx, dev)) out.push_back(std::move(t));
    i = j;
  }
  return out;
}

// One window per task, each task on one thread with its own fork of ctx: every GEMM has the same shape and runs
// single-threaded whatever --threads is (OpenBLAS's bits depend on both), so the perplexity is thread-independent.
std::vector<torch::Tensor> nll_one_per_thread(ModelAdapter& model, const torch::Tensor& stream,
                                              const std::vector<PplWindow>& wins, const UnitContext& ctx) {
  std::vector<torch::Tensor> out(wins.size());
  at::parallel_for(0, static_cast<int64_t>(wins.size()), 1, [&](int64_t b, int64_t e) {
    torch::NoGradGuard ng;
    auto own = ctx.fork();
    for (int64_t k = b; k < e; ++k) out[k] = window_nll(model, stream, wins, k, k + 1, *own, torch::kCPU)[0];
  });
  return out;
}

}  // namespace

PplResult perplexity(ModelAdapter& model, const torch::Tensor& stream_in, const PplProtocol& protocol, UnitContext& ctx) {
  torch::NoGradGuard no_grad;
  torch::Tensor stream = ppl_stream(stream_in, protocol);
  const int64_t N = stream.size(0);
  const std::vector<PplWindow> wins = ppl_windows(N, protocol);

  Stopwatch sw;
  torch::Device dev = torch::kCPU;
  for (Unit* u : model.units())
    if (!u->layers().empty()) dev = u->layers()[0].weight.device();
  const bool forkable = dev.is_cpu() && ctx.fork() != nullptr;
  const std::vector<torch::Tensor> nll = forkable ? nll_one_per_thread(model, stream, wins, ctx)
                                                  : nll_batched(model, stream, wins, protocol.batch, ctx, dev);
  double sum = 0;
  int64_t count = 0;
  std::vector<torch::Tensor> scored;
  for (size_t k = 0; k < wins.size(); ++k) {
    const int64_t first = wins[k].lo - wins[k].s - 1;  // local index of the first scored prediction
    scored.push_back(nll[k].slice(0, first));
    sum += scored.back().sum().item<double>();
    count += scored.back().numel();
  }
  FQ_CHECK(std::isfinite(sum), NumericError, "perplexity: NLL is not finite -> ", sum,
           " -> the model produced NaN/inf logits; hint: check the quantized weights/scales");
  PplResult r;
  r.nll = sum / static_cast<double>(count);
  r.ppl = std::exp(r.nll);
  r.tokens_scored = count;
  r.stream_tokens = N;
  r.windows = static_cast<int64_t>(wins.size());
  r.seconds = sw.seconds();
  r.protocol = protocol.describe();
  r.token_nll = torch::cat(scored);
  return r;
}

PplResult perplexity(ModelAdapter& model, const std::string& text_path, const Tokenizer& tok,
                     const PplProtocol& protocol, UnitContext& ctx, const std::string& cache_dir) {
  return perplexity(model, corpus_tokens(text_path, tok, protocol.range, cache_dir), protocol, ctx);
}

torch::Tensor calibration_samples(const std::string& path, const Tokenizer& tok, const CalibSpec& spec,
                                  const std::string& cache_dir) {
  FQ_CHECK(spec.n >= 1, ConfigError, "calibration n ", spec.n, " -> allowed >= 1");
  FQ_CHECK(spec.len >= 2, ConfigError, "calibration len ", spec.len, " -> allowed >= 2");
  torch::Tensor stream = corpus_tokens(path, tok, spec.range, cache_dir);
  const int64_t N = stream.size(0);
  FQ_CHECK(N >= spec.len, ConfigError, "calibration len ", spec.len, " -> the paragraph range [",
           spec.range.first_paragraph, ", ", spec.range.last_paragraph, ") of ", path, " holds only ", N,
           " tokens; hint: widen the range or shorten the sequences");
  std::mt19937_64 rng(spec.seed);
  const uint64_t span = static_cast<uint64_t>(N - spec.len + 1);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < spec.n; ++i) {
    int64_t o = static_cast<int64_t>(rng() % span);
    rows.push_back(stream.slice(0, o, o + spec.len));
  }
  return torch::stack(rows);
}

std::vector<int32_t> generate_greedy(ModelAdapter& model, int64_t max_seq_len, int64_t steps, UnitContext& ctx,
                                     std::vector<int32_t> prompt) {
  FQ_CHECK(!prompt.empty(), ConfigError, "generation prompt is empty -> start with at least BOS (id 1)");
  FQ_CHECK(steps >= 0, ConfigError, "generation steps ", steps, " -> allowed >= 0");
  torch::NoGradGuard no_grad;
  torch::Device dev = torch::kCPU;
  for (Unit* u : model.units())
    if (!u->layers().empty()) dev = u->layers()[0].weight.device();
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  for (int64_t step = 0; step < steps && static_cast<int64_t>(ids.size()) < max_seq_len; ++step) {
    torch::Tensor x = torch::tensor(ids, torch::kLong).unsqueeze(0).to(dev);
    torch::Tensor logits = model.forward(x, ctx);  // [1, T, V]
    int64_t next = logits[0][-1].argmax().item<int64_t>();
    if (next == Tokenizer::kBos) break;
    ids.push_back(next);
  }
  return std::vector<int32_t>(ids.begin(), ids.end());
}

}  // namespace flexquant
