// GGUF export checked against llama.cpp itself: the reference quantizer byte for byte against libggml-base (the
// library node-llama-cpp ships, opened with dlopen), flexquant's codes packed exactly, files llama.cpp loads and
// runs with the same greedy text and (within 1 %) the same perplexity as flexquant's own evaluation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "flexquant/error.h"
#include "flexquant/ggml_types.h"
#include "flexquant/gguf_llama.h"
#include "flexquant/gguf_mix.h"
#include "flexquant/libggml.h"
#include "flexquant/llamacpp.h"
#include "flexquant/lm_eval.h"
#include "flexquant/pipeline.h"
#include "flexquant/rounder.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::shared_path;
namespace fs = std::filesystem;

namespace {

std::unique_ptr<LlamaModel> stories() { return load_llama2c(shared_path("data/lm/stories260K.bin")); }

std::string tmp(const std::string& name) { return (fs::temp_directory_path() / name).string(); }

}  // namespace

TEST(GgmlTypes, ReferenceQuantizerMatchesLibggmlByteForByte) {
  const LibGgml& lib = LibGgml::get();  // IoError with the set-up command when missing: never skipped
  auto model = stories();
  int64_t bytes_checked = 0, tensors = 0;
  for (const NamedTensor& nt : model->named_tensors()) {
    torch::Tensor w = nt.tensor->contiguous();
    const int64_t n = w.size(-1), rows = w.numel() / n;
    if (nt.role == TensorRole::Norm || n % 32 != 0) continue;  // ffn_down rows (172) fit no block type
    ++tensors;
    for (const auto& info : ggml_types()) {
      if (info.type == GgmlType::F32 || info.block == 256) continue;  // k-quants: KQuantsMatchLibggmlByteForByte
      auto ours = ggml_quantize_ref(info.type, w.data_ptr<float>(), rows, n);
      auto theirs = lib.quantize(info.type, w.data_ptr<float>(), rows, n, nullptr);
      ASSERT_EQ(theirs.size(), ours.size()) << info.name << " " << nt.name;
      ASSERT_EQ(std::memcmp(ours.data(), theirs.data(), ours.size()), 0) << info.name << " " << nt.name;
      bytes_checked += static_cast<int64_t>(ours.size());
    }
  }
  EXPECT_EQ(tensors, 1 + 5 * 6);  // token_embd and every attention / gate / up weight
  std::cout << "[ ggml ] " << bytes_checked << " bytes of " << tensors << " real tensors equal libggml-base's\n";
}

namespace {

// Real weights (every stories260K tensor but the norms, flattened into 256-wide rows: its own rows of 64 and 172 fit
// no super-block) and the edge cases of the k-quants' searches: zero super-blocks, zero sub-blocks, a lone outlier
// that rounds small sub-block scales to 0, constant, one-signed and sub-threshold (1e-20) blocks.
std::vector<std::pair<std::string, torch::Tensor>> kquant_rows() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto model = stories();
  for (const NamedTensor& nt : model->named_tensors())
    if (nt.role != TensorRole::Norm) out.emplace_back(nt.name, nt.tensor->contiguous().reshape({-1, 256}).clone());
  torch::manual_seed(7);
  torch::Tensor e = torch::randn({8, 256}) * 0.02;
  e[0].zero_();
  e[1].slice(0, 0, 128).zero_();
  e[2][5] = 40.0;
  e[3].fill_(0.25);
  e[4] = e[4].abs();
  e[5] = -e[5].abs();
  e[6].fill_(1e-20);
  e[7].slice(0, 32, 48).fill_(-3.0);
  out.emplace_back("edge cases", e);
  return out;
}

}  // namespace

// Every k-quant: our reference rounding gives libggml-base's bytes, and our dequantization its floats, bit for bit.
TEST(GgmlTypes, KQuantsMatchLibggmlByteForByte) {
  const LibGgml& lib = LibGgml::get();
  int64_t bytes = 0;
  for (const auto& [name, w] : kquant_rows()) {
    for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
      const char* tn = ggml_type_info(t).name;
      const int64_t rows = w.size(0);
      auto ours = ggml_quantize_ref(t, w.data_ptr<float>(), rows, 256);
      auto theirs = lib.quantize(t, w.data_ptr<float>(), rows, 256, nullptr);
      ASSERT_EQ(ours.size(), theirs.size()) << tn << " " << name;
      ASSERT_EQ(std::memcmp(ours.data(), theirs.data(), ours.size()), 0) << tn << " " << name;
      auto back = ggml_dequantize(t, ours.data(), rows, 256);
      auto ref = lib.dequantize(t, ours.data(), rows, 256);
      ASSERT_EQ(std::memcmp(back.data(), ref.data(), back.size() * 4), 0) << tn << " dequantize " << name;
      bytes += static_cast<int64_t>(ours.size());
    }
  }
  std::cout << "[ ggml ] " << bytes << " k-quant bytes equal libggml-base's, and their dequantization\n";
}

// llama.cpp's importance matrix (mean squared inputs per column, collected on real text) steers its own Q4_0 rounding
// in libggml: the importance-weighted error of every attention/FFN weight of the real model is lower with it.
namespace {
// Per-layer importance matrices of stories260K collected on real text, as llama.cpp's imatrix tool does.
std::map<std::string, torch::Tensor> stories_imatrix(LlamaModel& model) {
  Tokenizer tok = Tokenizer::load(shared_path("data/lm/tok512.bin"));
  CalibSpec spec;
  spec.n = 16;
  spec.len = 256;
  spec.range.last_paragraph = 200;
  torch::Tensor calib = calibration_samples(shared_path("data/lm/tinystories_valid_first.txt"), tok, spec);
  ImatrixCollector c;
  torch::NoGradGuard ng;
  model.forward(calib, c);
  return c.imatrix();
}
}  // namespace

// With an importance matrix, our port of llama.cpp's weighted searches gives libggml-base's bytes for every type
// that takes one: the 32-weight types on every real 64-wide layer, the k-quants on the same weights in 256-wide
// rows (the layer's real importances repeated per 64 columns).
TEST(GgmlTypes, ImatrixQuantizerMatchesLibggmlByteForByte) {
  const LibGgml& lib = LibGgml::get();
  auto model = stories();
  auto im = stories_imatrix(*model);
  int64_t bytes = 0;
  for (QuantLayer* l : model->all_layers()) {
    torch::Tensor w = l->weight.contiguous();
    if (w.size(1) % 32) continue;  // ffn_down (172)
    torch::Tensor imp = im.at(l->name).contiguous();
    for (const auto& info : ggml_types()) {
      if (info.type == GgmlType::F32 || info.type == GgmlType::F16) continue;
      const bool k = info.block == 256;
      torch::Tensor x = k ? w.reshape({-1, 256}).contiguous() : w;
      torch::Tensor q = k ? imp.repeat({4}).contiguous() : imp;
      auto ours = ggml_quantize(info.type, x.data_ptr<float>(), x.size(0), x.size(1), q.data_ptr<float>());
      auto theirs = lib.quantize(info.type, x.data_ptr<float>(), x.size(0), x.size(1), q.data_ptr<float>());
      ASSERT_EQ(ours.size(), theirs.size()) << info.name << " " << l->name;
      ASSERT_EQ(std::memcmp(ours.data(), theirs.data(), ours.size()), 0) << info.name << " " << l->name;
      bytes += static_cast<int64_t>(ours.size());
    }
  }
  std::cout << "[ ggml ] " << bytes << " bytes quantized with real importance matrices equal libggml-base's\n";
}

TEST(GgmlTypes, LlamaCppImatrixLowersWeightedErrorOnRealLayers) {
  auto model = stories();
  auto im = stories_imatrix(*model);
  int better = 0, layers = 0;
  for (QuantLayer* l : model->all_layers()) {
    torch::Tensor w = l->weight.contiguous();
    const int64_t n = w.size(1), rows = w.size(0);
    if (n % 32) continue;
    torch::Tensor imp = im.at(l->name).contiguous();
    auto err = [&](const std::vector<uint8_t>& b) {
      auto d = ggml_dequantize(GgmlType::Q4_0, b.data(), rows, n);
      torch::Tensor dq = torch::from_blob(d.data(), w.sizes(), torch::kFloat);
      return ((dq - w).pow(2) * imp.unsqueeze(0)).sum().item<double>();
    };
    const double plain = err(LibGgml::get().quantize(GgmlType::Q4_0, w.data_ptr<float>(), rows, n, nullptr));
    const double with = err(LibGgml::get().quantize(GgmlType::Q4_0, w.data_ptr<float>(), rows, n, imp.data_ptr<float>()));
    better += with < plain;
    ++layers;
  }
  EXPECT_EQ(layers, 5 * 6);
  EXPECT_EQ(better, layers);
}

TEST(GgmlTypes, LearnedCodesPackExactlyAndDequantizeBitForBit) {
  auto model = stories();
  const QuantLayer& wq = model->layer(0).layers()[LlamaDecoderLayer::Wq];
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0}) {
    WeightQuantSpec spec = *ggml_weight_spec(t);
    if (t == GgmlType::Q4_1 || t == GgmlType::Q5_1) {  // the minimum is a half, fixed: every method starts at RTN
      const QParams qp = init_qparams(wq.weight, spec);
      ASSERT_TRUE(qp.offset.defined());
      EXPECT_TRUE(torch::equal(qp.offset.to(torch::kHalf).to(torch::kFloat), qp.offset));
      EXPECT_FALSE(qp.zero_point.any().item<bool>());
      // flexround-zp: FlexRound taking the minimum as a fractional zero point (flexround.min_as_zero_point)
      for (std::string m : {"rtn", "adaround", "flexround", "flexround-zp", "lrq", "gptq"}) {
        RounderOptions o;
        o.flexround_min_as_zero_point = m == "flexround-zp";
        auto r = make_rounder(o.flexround_min_as_zero_point ? "flexround" : m, o);
        LayerStats st;
        st.hessian = torch::eye(wq.weight.size(1));
        r->init(wq.weight, spec, qp, st);
        auto h = r->harden();
        EXPECT_TRUE(torch::equal(h.qparams.offset, qp.offset)) << m << ": the minimum moved";
        if (m != "gptq") {
          EXPECT_TRUE(torch::equal(r->forward(true), fake_quant_rtn(wq.weight, spec, qp))) << m;
        }
        EXPECT_EQ(ggml_grid_mismatch(t, h), "") << m;
        if (m == "flexround-zp") {  // trained: the file's dequantization is still the forward, the minimum fixed
          {
            torch::NoGradGuard ng;
            for (auto& p : r->parameters()) p.add_(torch::randn_like(p) * 0.05);
          }
          QuantizedTensor h2 = r->harden();
          EXPECT_TRUE(torch::equal(h2.qparams.offset, qp.offset));
          EXPECT_TRUE(torch::equal(h2.dequantize(), r->forward(true).detach()));
          EXPECT_FALSE(torch::equal(h2.codes, h.codes));
          EXPECT_EQ(ggml_grid_mismatch(t, h2), "");
        }
      }
    }
    auto r = make_rounder("flexround");
    r->init(wq.weight, spec, init_qparams(wq.weight, spec));
    {
      torch::NoGradGuard ng;
      for (auto& p : r->parameters()) p.add_(torch::randn_like(p) * 0.05);
    }
    QuantizedTensor q = r->harden();
    EXPECT_EQ(ggml_grid_mismatch(t, q), "");
    auto bytes = ggml_pack(t, q, "wq");
    auto back = ggml_dequantize(t, bytes.data(), wq.weight.size(0), wq.weight.size(1));
    torch::Tensor b = torch::from_blob(back.data(), wq.weight.sizes(), torch::kFloat);
    EXPECT_TRUE(torch::equal(b, q.dequantize())) << ggml_type_info(t).name;
    EXPECT_TRUE(torch::equal(b, r->forward(true).detach())) << ggml_type_info(t).name;
  }
  // A grid that is not the type's is refused with the recipe setting that fixes it.
  WeightQuantSpec fp32_scales = *ggml_weight_spec(GgmlType::Q4_0);
  fp32_scales.scale_dtype = ScaleDtype::Fp32;
  QuantizedTensor q = quantize_rtn(wq.weight, fp32_scales, init_qparams(wq.weight, fp32_scales));
  flexquant::testing::expect_error<ConfigError>([&] { ggml_pack(GgmlType::Q4_0, q, "layer \"wq\""); },
                                     {"layer \"wq\"", "q4_0", "weight.scale_dtype=fp16"});
}

// weight.init=signed: llama.cpp's orientation of the symmetric types, each block's largest-magnitude weight on the
// extra level of its own sign (zero point zq - 1 when it is positive, written as a negative block scale). Every
// method starts there, packs exactly, and round-to-nearest's weight error is llama.cpp's own within 2 % (it rounds
// with the fp32 scale and stores its half; flexquant rounds with the half it stores), far below the MSE grid's.
TEST(GgmlTypes, SignedStartIsLlamaCppsOrientationAndPacksExactly) {
  const LibGgml& lib = LibGgml::get();
  auto model = stories();
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0}) {
    const std::string tn = ggml_type_info(t).name;
    double err_signed = 0, err_mse = 0, err_ggml = 0;
    int64_t flipped = 0, blocks = 0;
    for (QuantLayer* l : model->all_layers()) {
      torch::Tensor w = l->weight.contiguous();
      const int64_t rows = w.size(0), n = w.size(1);
      if (n % 32) continue;
      WeightQuantSpec spec = *ggml_weight_spec(t);
      const auto err = [&](const torch::Tensor& v) { return (v - w).pow(2).sum().item<double>(); };
      err_mse += err(fake_quant_rtn(w, spec, init_qparams(w, spec)));
      spec.init = ScaleInit::Signed;
      const QParams qp = init_qparams(w, spec);
      const double zq = static_cast<double>(1 << (spec.bits() - 1));
      ASSERT_TRUE((qp.zero_point.eq(zq) | qp.zero_point.eq(zq - 1)).all().item<bool>()) << tn;
      flipped += qp.zero_point.eq(zq - 1).sum().item<int64_t>();
      blocks += qp.zero_point.numel();
      const QuantizedTensor rtn = quantize_rtn(w, spec, qp);
      // The largest |level| of each block is the extra one, zq, on the largest weight's side.
      const torch::Tensor level = rtn.codes.to(torch::kFloat) - qp.zero_point;
      const torch::Tensor side = torch::where(qp.zero_point.eq(zq), -level, level).amax(2);
      EXPECT_TRUE(side.eq(zq).all().item<bool>()) << tn << " " << l->name;
      err_signed += err(rtn.dequantize());
      auto theirs = lib.quantize(t, w.data_ptr<float>(), rows, n, nullptr);
      auto d = ggml_dequantize(t, theirs.data(), rows, n);
      err_ggml += err(torch::from_blob(d.data(), w.sizes(), torch::kFloat).clone());
      for (const char* m : {"rtn", "adaround", "flexround", "lrq", "gptq"}) {
        auto r = make_rounder(m);
        LayerStats st;
        st.hessian = torch::eye(n);
        r->init(w, spec, qp, st);
        if (std::string(m) != "gptq") {
          EXPECT_TRUE(torch::equal(r->harden().codes, rtn.codes)) << m << " " << tn;
        }
        {
          torch::NoGradGuard ng;
          for (auto& p : r->parameters()) p.add_(torch::randn_like(p) * 0.05);
        }
        QuantizedTensor q = r->harden();
        EXPECT_TRUE(torch::equal(q.qparams.zero_point, qp.zero_point)) << m << ": the orientation moved";
        auto bytes = ggml_pack(t, q, l->name);  // InternalError unless llama.cpp's dequantization is the forward
        auto back = ggml_dequantize(t, bytes.data(), rows, n);
        EXPECT_TRUE(torch::equal(torch::from_blob(back.data(), w.sizes(), torch::kFloat), r->forward(true).detach()))
            << m << " " << tn << " " << l->name;
      }
    }
    std::cout << "[ signed ] " << tn << ": weight SSE signed " << err_signed << ", llama.cpp " << err_ggml << ", mse grid "
              << err_mse << "; " << flipped << " of " << blocks << " blocks with a negative scale\n";
    EXPECT_GT(flipped, blocks / 4) << tn;
    EXPECT_LT(flipped, blocks * 3 / 4) << tn;
    EXPECT_LT(err_signed, 1.02 * err_ggml) << tn;
  }
  // Orienting needs a symmetric integer grid.
  WeightQuantSpec asym = *ggml_weight_spec(GgmlType::Q4_1);
  asym.init = ScaleInit::Signed;
  flexquant::testing::expect_error<ConfigError>([&] { init_qparams(torch::randn({4, 32}), asym); },
                                                {"weight.init=signed", "weight.symmetric=true"});
}

TEST(Gguf, F32ExportReadsBackBitForBitWithItsTokenizer) {
  auto model = stories();
  Tokenizer tok = Tokenizer::load(shared_path("data/lm/tok512.bin"));
  GgufExportOptions o;
  o.type = GgmlType::F32;
  const std::string path = tmp("fq_test_f32.gguf");
  auto rep = export_gguf(*model, QuantState{}, tok, o, path);
  EXPECT_EQ(rep.tensors.size(), 1u + 5 * 9 + 1);
  auto back = load_llama_gguf(path);
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  Tokenizer tok2 = load_gguf_tokenizer(path);
  ASSERT_EQ(tok2.encode(text), tok.encode(text));
  auto ids = tok.encode(text);
  torch::Tensor x = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
  EXPECT_TRUE(torch::equal(back->forward(x), model->forward(x)));
  fs::remove(path);
}

TEST(Gguf, BadFilesNameTheFileAndField) {
  auto model = stories();
  Tokenizer tok = Tokenizer::load(shared_path("data/lm/tok512.bin"));
  const std::string good = tmp("fq_test_good.gguf");
  GgufExportOptions o;
  o.type = GgmlType::Q8_0;
  export_gguf(*model, QuantState{}, tok, o, good);
  std::ifstream in(good, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto write = [&](const std::string& name, const std::vector<char>& b) {
    std::ofstream(tmp(name), std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
    return tmp(name);
  };
  flexquant::testing::expect_error<IoError>([&] { GgufFile::read(tmp("fq_no_such.gguf")); }, {"fq_no_such.gguf"});
  auto cut = std::vector<char>(bytes.begin(), bytes.begin() + static_cast<long>(bytes.size() / 2));
  flexquant::testing::expect_error<IoError>([&] { GgufFile::read(write("fq_cut.gguf", cut)); }, {"fq_cut.gguf", "truncated"});
  auto head = std::vector<char>(bytes.begin(), bytes.begin() + 100);
  flexquant::testing::expect_error<IoError>([&] { GgufFile::read(write("fq_head.gguf", head)); }, {"fq_head.gguf", "truncated"});
  auto v4 = bytes;
  v4[4] = 4;
  flexquant::testing::expect_error<IoError>([&] { GgufFile::read(write("fq_v4.gguf", v4)); }, {"fq_v4.gguf", "version 4", "2 and 3"});
  auto magic = bytes;
  magic[0] = 'X';
  flexquant::testing::expect_error<IoError>([&] { GgufFile::read(write("fq_magic.gguf", magic)); }, {"fq_magic.gguf", "not a GGUF"});
  // An unsupported tensor type (12 = Q4_K): patch the type field of the first tensor info.
  GgufFile f = GgufFile::read(good);
  std::string first = f.tensors[0].name;
  auto pos = std::search(bytes.begin(), bytes.end(), first.begin(), first.end()) - bytes.begin();
  const size_t type_at = static_cast<size_t>(pos) + first.size() + 4 + 8 * f.tensors[0].ne.size();
  auto k = bytes;
  k[type_at] = 16;  // IQ2_XXS: not supported
  flexquant::testing::expect_error<IoError>([&] { GgufFile::read(write("fq_k.gguf", k)); }, {"fq_k.gguf", first, "type id 16", "q8_0"});
  for (auto n : {"fq_cut.gguf", "fq_head.gguf", "fq_v4.gguf", "fq_magic.gguf", "fq_k.gguf"}) fs::remove(tmp(n));
  fs::remove(good);
}

// The whole path on the real model: FlexRound on the Q8_0 and Q4_0 grids, saved as .gguf by the task; the file
// dequantizes to exactly the evaluated weights (ffn_down: f16 fallback), llama.cpp loads it, decodes the same greedy
// text (Q8_0), and its perplexity is within 1 % of flexquant's.
TEST(LlamaCpp, FlexRoundExportsRunInLlamaCpp) {
  Workload w;
  w.model = shared_path("data/lm/stories260K.bin");
  w.data = shared_path("data/lm/tinystories_valid_first.txt");
  w.eval_limit = 4000;
  auto task = make_task(w);
  for (const char* type : {"q8_0", "q4_0", "q4_1", "q5_1"}) {
    Recipe r;
    r.method = "flexround";
    r.weight_bits = std::string(type) == "q8_0" ? 8 : type[1] - '0';
    r.weight_symmetric = type[3] == '0';  // q4_1 / q5_1: asymmetric, the minimum a half
    r.weight_granularity = "group";
    r.weight_group_size = 32;
    r.weight_scale_dtype = "fp16";
    r.iters = 20;
    r.calib_samples = 16;
    r.calib_seq_len = 128;
    const std::string path = tmp(std::string("fq_test_") + type + ".gguf");
    auto model = task->load_model();
    QuantState state;
    quantize(*model, task->calibration(r), r, state, [](const std::string&) {});
    task->save(*model, state, QModelInfo{}, r, path);
    UnitContext fp;
    const double ours = task->evaluate(*model, fp);
    GgufFile f = GgufFile::read(path);
    EXPECT_EQ(ggml_type_info(f.find_tensor("blk.0.attn_q.weight")->type).name, std::string(type));
    EXPECT_EQ(f.find_tensor("blk.0.ffn_down.weight")->type, GgmlType::F16);  // rows of 172: llama.cpp's fallback

    // Every block-typed tensor holds exactly the evaluated weights; ffn_down's differ only by f16 rounding.
    auto back = load_llama_gguf(path);
    auto evaluated = model->all_layers();
    auto loaded = back->all_layers();
    for (size_t i = 0; i < loaded.size(); ++i) {
      if (loaded[i]->name.find("w2") != std::string::npos)
        EXPECT_TRUE(torch::allclose(loaded[i]->weight, evaluated[i]->weight, 1e-3, 0)) << loaded[i]->name;
      else
        EXPECT_TRUE(torch::equal(loaded[i]->weight, evaluated[i]->weight)) << loaded[i]->name;
    }
    {  // exact_fallback: f32 rows instead, and the file holds exactly every evaluated weight
      GgufExportOptions o;
      o.type = parse_ggml_type(type);
      o.exact_fallback = true;
      export_gguf(*model, state, load_gguf_tokenizer(path), o, path + ".exact");
      auto exact = load_llama_gguf(path + ".exact");
      for (size_t i = 0; i < loaded.size(); ++i)
        EXPECT_TRUE(torch::equal(exact->all_layers()[i]->weight, evaluated[i]->weight)) << loaded[i]->name;
      fs::remove(path + ".exact");
    }
    const double reloaded = task->evaluate(*back, fp);
    EXPECT_LT(std::abs(reloaded / ours - 1), 1e-4) << type;

    const double theirs = task->evaluate_in_runtime(path, "llama.cpp");
    std::cout << "[ llama.cpp ] " << type << " perplexity flexquant " << ours << " llama.cpp " << theirs << " ("
              << 100 * (theirs / ours - 1) << " %)\n";
    EXPECT_LT(std::abs(theirs / ours - 1), 0.01) << type;
    if (std::string(type) == "q8_0") {
      auto mine = generate_greedy(*back, 512, 60, fp);
      auto lc = llamacpp_evaluate(path, torch::Tensor(), PplProtocol{}, 60);
      EXPECT_EQ(lc.greedy, mine);
    }
    fs::remove(path);
  }
}

namespace {

// A seeded random Llama whose rows (256, 512) fit the k-quants' super-blocks, with stories260K's vocabulary so that
// real TinyStories text calibrates and evaluates it; written as an f32 GGUF, which flexquant reads as a source model.
std::string random_kquant_llama() {
  LlamaConfig c;
  c.dim = 256, c.hidden_dim = 512, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.vocab_size = 512;
  c.max_seq_len = 256;
  LlamaModel m(c);
  torch::manual_seed(11);
  torch::NoGradGuard ng;
  for (const NamedTensor& nt : m.named_tensors()) {
    if (nt.role == TensorRole::Norm) nt.tensor->fill_(1.0);
    else nt.tensor->copy_(torch::randn(nt.tensor->sizes()) * 0.05);
  }
  GgufExportOptions o;
  o.type = GgmlType::F32;
  const std::string path = tmp("fq_random_llama_f32.gguf");
  export_gguf(m, QuantState{}, Tokenizer::load(shared_path("data/lm/tok512.bin")), o, path);
  return path;
}

// The random Llama evaluated on real TinyStories text, and a short FlexRound for it (a fine grid wants a small step).
std::unique_ptr<Task> random_llama_task(const std::string& model) {
  Workload w;
  w.model = model;
  w.data = shared_path("data/lm/tinystories_valid_first.txt");
  w.eval_limit = 1000;
  return make_task(w);
}
Recipe short_flexround() {
  Recipe r;
  r.method = "flexround";
  r.iters = 10;
  r.lr = 3e-4;
  r.calib_samples = 4;
  r.calib_seq_len = 128;
  return r;
}

// The GGUF at `path` holds exactly `model`'s evaluated weights, and llama.cpp's perplexity of it is within 1 % of
// flexquant's.
void expect_file_is_evaluated_model(const Task& task, ModelAdapter& model, const std::string& path, const std::string& what) {
  auto back = load_llama_gguf(path);
  for (size_t i = 0; i < back->all_layers().size(); ++i)
    EXPECT_TRUE(torch::equal(back->all_layers()[i]->weight, model.all_layers()[i]->weight)) << what << " " << back->all_layers()[i]->name;
  UnitContext fp;
  const double ours = task.evaluate(model, fp);
  const double theirs = task.evaluate_in_runtime(path, "llama.cpp");
  std::cout << "[ llama.cpp ] " << what << " perplexity flexquant " << ours << " llama.cpp " << theirs << " ("
            << 100 * (theirs / ours - 1) << " %)\n";
  EXPECT_LT(std::abs(theirs / ours - 1), 0.01) << what;
}

const GgmlType kKQuants[] = {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

}  // namespace

// Learned rounding on the k-quants' own two-level grids: every method starts exactly at round-to-nearest on the grid
// (llama.cpp's own search, in canonical form), that grid's codes are llama.cpp's bytes (but for the groups the
// canonical form moves: counted), and FlexRound's learned codes and scales pack into the type exactly, with
// llama.cpp's own dequantization giving the weights flexquant evaluated.
TEST(GgmlTypes, KQuantGridsStartAtLlamaCppAndPackLearnedCodesExactly) {
  const LibGgml& lib = LibGgml::get();
  auto real = stories();
  torch::Tensor w_real = real->all_layers()[0]->weight.contiguous().reshape({-1, 256}).clone();  // wq, 16 x 256
  torch::manual_seed(3);
  torch::Tensor w_rand = torch::randn({32, 512}) * 0.05;
  torch::Tensor x = torch::randn({256, 512});  // a fixed least-squares problem for the learned rounding
  for (GgmlType t : kKQuants) {
    const char* tn = ggml_type_info(t).name;
    const WeightQuantSpec spec = *ggml_weight_spec(t);
    for (const torch::Tensor& w : {w_real, w_rand}) {
      const QParams qp = init_qparams(w, spec);
      EXPECT_TRUE(torch::equal(stored_scale(qp.scale, spec), qp.scale)) << tn << ": the projection is idempotent";
      const torch::Tensor rtn = fake_quant_rtn(w, spec, qp);
      for (const char* m : {"rtn", "adaround", "flexround", "lrq"}) {
        auto r = make_rounder(m);
        r->init(w, spec, qp);
        EXPECT_TRUE(torch::equal(r->forward(true), rtn)) << tn << " " << m << " does not start at round-to-nearest";
      }
      const QuantizedTensor q = quantize_rtn(w, spec, qp);
      EXPECT_TRUE(torch::equal(q.dequantize(), rtn)) << tn;
      auto ours = ggml_pack(t, q, "rtn");
      auto ref = ggml_quantize_ref(t, w.data_ptr<float>(), w.size(0), w.size(1));
      const int64_t bytes = ggml_type_info(t).block_bytes, blocks = static_cast<int64_t>(ref.size()) / bytes;
      int64_t differ = 0;
      for (int64_t b = 0; b < blocks; ++b) differ += std::memcmp(ours.data() + b * bytes, ref.data() + b * bytes, bytes) != 0;
      std::cout << "[ kquant ] " << tn << " " << w.size(0) << "x" << w.size(1) << ": " << blocks - differ << " of "
                << blocks << " super-blocks byte-equal to llama.cpp's rounding\n";
      EXPECT_LE(differ * 4, blocks) << tn << ": the canonical grid should move few super-blocks";
    }
    // FlexRound learns scales and divisions on the grid; what it exports is exactly what it evaluated.
    const QParams qp = init_qparams(w_rand, spec);
    auto r = make_rounder("flexround");  // s1 learned too: re-projected onto d * sc in every forward
    r->init(w_rand, spec, qp);
    // A fine grid wants a small step: at 3e-3 the divisions move weights across several levels within 60 steps.
    torch::optim::Adam opt(r->parameters(), torch::optim::AdamOptions(3e-4));
    const torch::Tensor y = x.mm(w_rand.t());
    auto loss_of = [&](const torch::Tensor& wq) { return (x.mm(wq.t()) - y).pow(2).mean(); };
    const double start = loss_of(r->forward(true)).item<double>();
    for (int step = 0; step < 60; ++step) {
      opt.zero_grad();
      loss_of(r->forward(false)).backward();
      opt.step();
    }
    const torch::Tensor hard = r->forward(true).detach();
    const QuantizedTensor learned = r->harden();
    EXPECT_TRUE(torch::equal(learned.dequantize(), hard)) << tn;
    EXPECT_LT(loss_of(hard).item<double>(), start) << tn << ": FlexRound did not improve on round-to-nearest";
    auto packed = ggml_pack(t, learned, "flexround");  // checks the dequantized file against `hard` itself
    auto theirs = lib.dequantize(t, packed.data(), w_rand.size(0), w_rand.size(1));
    torch::Tensor back = torch::from_blob(theirs.data(), hard.sizes(), torch::kFloat);
    EXPECT_TRUE(torch::equal(back, hard)) << tn << ": llama.cpp's dequantization differs from the evaluated weight";
    std::cout << "[ kquant ] " << tn << " flexround output MSE " << start << " -> " << loss_of(hard).item<double>() << "\n";
    // GPTQ on the same fixed grid (its Hessian from the same inputs).
    auto g = make_rounder("gptq");
    g->init(w_rand, spec, qp, LayerStats{x.t().mm(x) / x.size(0)});
    const QuantizedTensor gq = g->harden();
    EXPECT_LT(loss_of(gq.dequantize()).item<double>(), start) << tn << ": GPTQ did not improve on round-to-nearest";
    auto gpacked = ggml_pack(t, gq, "gptq");
    auto gback = lib.dequantize(t, gpacked.data(), w_rand.size(0), w_rand.size(1));
    EXPECT_TRUE(torch::equal(torch::from_blob(gback.data(), hard.sizes(), torch::kFloat), gq.dequantize())) << tn;
    std::cout << "[ kquant ] " << tn << " gptq output MSE " << start << " -> " << loss_of(gq.dequantize()).item<double>() << "\n";
  }
}

// The whole path in llama.cpp for every k-quant: FlexRound on the type's grid through quantize(), saved as .gguf by
// the task; every tensor in the file dequantizes to the evaluated weights and llama.cpp's perplexity is within 1 %
// of flexquant's (on a seeded random model: stories260K's rows fit no super-block).
TEST(LlamaCpp, KQuantFlexRoundExportsRunInLlamaCpp) {
  const std::string src = random_kquant_llama();
  auto task = random_llama_task(src);
  for (GgmlType t : kKQuants) {
    const WeightQuantSpec spec = *ggml_weight_spec(t);
    Recipe r = short_flexround();
    r.weight_bits = spec.bits();
    r.weight_symmetric = spec.symmetric;
    r.weight_granularity = "group";
    r.weight_group_size = spec.group_size;
    r.weight_scale_dtype = "kquant";
    const std::string path = tmp(std::string("fq_test_") + ggml_type_info(t).name + ".gguf");
    auto model = task->load_model();
    QuantState state;
    quantize(*model, task->calibration(r), r, state, [](const std::string&) {});
    task->save(*model, state, QModelInfo{}, r, path);
    GgufFile f = GgufFile::read(path);
    EXPECT_EQ(f.find_tensor("blk.1.ffn_down.weight")->type, t);
    expect_file_is_evaluated_model(*task, *model, path, ggml_type_info(t).name);
    fs::remove(path);
  }
  fs::remove(src);
}

// weight.mix=q4_k_m assigns llama.cpp's Q4_K_M types per layer (use_more_bits: attn_v / ffn_down of the first and
// last eighth and every third layer between on Q6_K), with llama.cpp's fallbacks for rows that fit no super-block.
TEST(GgufMix, Q4KMAssignsLlamaCppTypesWithFallbacks) {
  auto real = stories();  // 5 layers, rows of 64 (and 172): no super-block fits
  auto types = gguf_mix_types("q4_k_m", *real);
  EXPECT_EQ(types.at("layers.0.attention.wq"), GgmlType::Q5_0);   // Q4_K -> Q5_0
  EXPECT_EQ(types.at("layers.0.attention.wv"), GgmlType::Q5_0);
  EXPECT_EQ(types.at("layers.2.attention.wv"), GgmlType::Q8_0);   // use_more_bits(2, 5): Q6_K -> Q8_0
  EXPECT_EQ(types.at("layers.4.feed_forward.w2"), GgmlType::Q8_0);
  EXPECT_EQ(types.at("layers.3.feed_forward.w2"), GgmlType::Q5_0);
  EXPECT_EQ(gguf_mix_types("q5_k_m", *real).at("layers.0.attention.wq"), GgmlType::Q5_1);  // Q5_K -> Q5_1
  flexquant::testing::expect_error<ConfigError>([&] { gguf_mix_types("q4_k_x", *real); }, {"q4_k_x", "q4_k_m", "q5_k_m"});
}

// The mix through quantize() on the seeded random Llama (rows fit the super-blocks): FlexRound learns every layer on
// its own type's grid, the file holds those types and exactly the evaluated weights, and llama.cpp's perplexity is
// within 1 % of flexquant's.
TEST(LlamaCpp, Q4KMMixOfFlexRoundRunsInLlamaCpp) {
  const std::string src = random_kquant_llama();
  auto task = random_llama_task(src);
  Recipe r = short_flexround();
  r.weight_mix = "q4_k_m";
  r.validate();
  const std::string path = tmp("fq_test_q4_k_m.gguf");
  auto model = task->load_model();
  QuantState state;
  quantize(*model, task->calibration(r), r, state, [](const std::string&) {});
  task->save(*model, state, QModelInfo{}, r, path);
  GgufFile f = GgufFile::read(path);
  EXPECT_EQ(f.find_tensor("blk.0.attn_v.weight")->type, GgmlType::Q4_K);
  EXPECT_EQ(f.find_tensor("blk.1.attn_v.weight")->type, GgmlType::Q6_K);  // use_more_bits(1, 2)
  EXPECT_EQ(f.find_tensor("blk.1.ffn_down.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(f.find_tensor("blk.1.ffn_up.weight")->type, GgmlType::Q4_K);
  EXPECT_EQ(state.weights.at("layers.1.attention.wv").spec.bits(), 6);
  expect_file_is_evaluated_model(*task, *model, path, "q4_k_m");
  fs::remove(path);
  fs::remove(src);
}
