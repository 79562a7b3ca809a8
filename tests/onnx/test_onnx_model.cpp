// The generic ONNX adapter (units, layers and sites found from the graph, BatchNorm folded) and QDQ export,
// checked against the hand-written ResNet adapter and by ONNX Runtime itself.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <filesystem>
#include <fstream>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/export.h"
#include "flexquant/onnx_export.h"
#include "flexquant/qmodel.h"
#include "flexquant/reconstruct.h"
#include "flexquant/onnx_model.h"
#include "flexquant/onnxruntime.h"
#include "flexquant/pipeline.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::shared_path;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("fq_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

// A small CNN built with the ONNX project's own classes: Conv (asymmetric pads) -> BatchNormalization -> Relu ->
// Conv (stride 2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (transB 0). Seeded weights.
std::string write_small_cnn(const std::string& path) {
  torch::manual_seed(7);
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(13);
  auto* g = m.mutable_graph();
  auto init = [&](const std::string& name, const torch::Tensor& v) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (auto d : v.sizes()) t->add_dims(d);
    torch::Tensor c = v.contiguous();
    t->set_raw_data(std::string(static_cast<const char*>(c.data_ptr()), c.numel() * 4));
  };
  auto node = [&](const std::string& op, std::vector<std::string> in, const std::string& out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(out + "_node");
    for (auto& s : in) n->add_input(s);
    n->add_output(out);
    return n;
  };
  auto ints = [](onnx::NodeProto* n, const std::string& k, std::vector<int64_t> v) {
    auto* a = n->add_attribute();
    a->set_name(k);
    a->set_type(onnx::AttributeProto::INTS);
    for (auto x : v) a->add_ints(x);
  };
  init("c1.w", torch::randn({8, 3, 3, 3}) * 0.3);
  init("bn.scale", torch::rand({8}) + 0.5);
  init("bn.bias", torch::randn({8}) * 0.1);
  init("bn.mean", torch::randn({8}) * 0.1);
  init("bn.var", torch::rand({8}) + 0.5);
  init("c2.w", torch::randn({16, 8, 3, 3}) * 0.2);
  init("c2.b", torch::randn({16}) * 0.1);
  init("fc.w", torch::randn({16, 5}) * 0.3);  // [in, out]: transB = 0
  init("fc.b", torch::randn({5}) * 0.1);
  ints(node("Conv", {"x", "c1.w"}, "h1"), "pads", {0, 1, 2, 1});
  node("BatchNormalization", {"h1", "bn.scale", "bn.bias", "bn.mean", "bn.var"}, "h2");
  node("Relu", {"h2"}, "h3");
  auto* c2 = node("Conv", {"h3", "c2.w", "c2.b"}, "h4");
  ints(c2, "strides", {2, 2});
  ints(c2, "pads", {1, 1, 1, 1});
  node("Relu", {"h4"}, "h5");
  node("GlobalAveragePool", {"h5"}, "h6");
  node("Flatten", {"h6"}, "h7");
  node("Gemm", {"h7", "fc.w", "fc.b"}, "y");
  auto io = [](onnx::ValueInfoProto* v, const std::string& name, std::vector<int64_t> dims) {
    v->set_name(name);
    v->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
    for (auto d : dims) v->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(d);
  };
  io(g->add_input(), "x", {4, 3, 12, 12});
  io(g->add_output(), "y", {4, 5});
  std::ofstream f(path, std::ios::binary);
  m.SerializeToOstream(&f);
  return path;
}

Recipe w4a4(const std::string& method, int iters) {
  Recipe r;
  r.method = method;
  r.weight_bits = 4;
  r.act_bits = 4;
  r.iters = iters;
  r.calib_samples = 128;
  r.batch = 16;
  return r;
}

// The graph adapter finds the hand-written adapter's units, layers and sites, and the same folded weights.
void expect_same_structure_and_weights(ModelAdapter& onnx, ModelAdapter& st) {
  auto a = onnx.units(), b = st.units();
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    // Names differ (this export kept no module scopes: "Conv_3-Conv_4" for "layer1.0"); the structure may not.
    ASSERT_EQ(a[k]->layers().size(), b[k]->layers().size()) << b[k]->name();
    for (size_t i = 0; i < b[k]->layers().size(); ++i) {
      const QuantLayer &x = a[k]->layers()[i], &y = b[k]->layers()[i];
      EXPECT_EQ(x.kind, y.kind);
      EXPECT_EQ(x.role, y.role) << y.name;
      EXPECT_EQ(x.stride, y.stride) << y.name;
      EXPECT_EQ(x.padding, y.padding) << y.name;
      EXPECT_TRUE(torch::equal(x.weight, y.weight)) << y.name;  // the exporter's BN fold and ours agree bit for bit
      EXPECT_TRUE(torch::equal(x.bias, y.bias)) << y.name;
    }
    ASSERT_EQ(a[k]->act_sites().size(), b[k]->act_sites().size()) << b[k]->name();
    for (size_t j = 0; j < b[k]->act_sites().size(); ++j) {
      EXPECT_EQ(a[k]->act_sites()[j].non_negative, b[k]->act_sites()[j].non_negative) << b[k]->act_sites()[j].name;
      EXPECT_EQ(a[k]->act_sites()[j].role, b[k]->act_sites()[j].role) << b[k]->act_sites()[j].name;
    }
  }
}

}  // namespace

TEST(OnnxModel, ResNetUnitsLayersAndSitesMatchTheHandWrittenAdapter) {
  for (const std::string depth : {"20", "32", "44"}) {
    SCOPED_TRACE("resnet" + depth);
    auto onnx = OnnxModel::load(shared_path("data/cifar10/resnet" + depth + ".onnx"));
    auto st = load_image_classifier(shared_path("data/cifar10/resnet" + depth + ".safetensors"), "resnet_cifar");
    expect_same_structure_and_weights(*onnx, *st);
  }
  auto onnx = OnnxModel::load(shared_path("data/cifar10/resnet20.onnx"));
  auto st = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  auto data = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin"));
  torch::Tensor x = data.images.slice(0, 0, 64);
  torch::NoGradGuard ng;
  EXPECT_LT((onnx->forward(x) - onnx->graph().run(x)).abs().max().item<double>(), 1e-5);
  EXPECT_LT((onnx->forward(x) - st->forward(x)).abs().max().item<double>(), 1e-4);
}

// The .onnx and the .safetensors of one model, each loaded as it is, drive the engine identically: both fold BatchNorm
// to the same floats (PyTorch's exporter's float32 arithmetic), and FlexRound + QDrop on both gives the same losses,
// codes and grids bit for bit.
TEST(OnnxModel, SameWeightsQuantizeBitForBitLikeTheHandWrittenAdapter) {
  auto onnx = OnnxModel::load(shared_path("data/cifar10/resnet20.onnx"));
  auto st = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  auto a = onnx->all_layers(), b = st->all_layers();
  ASSERT_EQ(a.size(), b.size());
  Recipe r = w4a4("flexround", 5);
  r.qdrop = 0.5;
  r.calib_samples = 32;
  r.batch = 8;
  torch::Tensor calib = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin")).images.slice(0, 0, 32);
  QuantState sa, sb;
  QuantizeReport ra = quantize_model(*onnx, calib, r, sa), rb = quantize_model(*st, calib, r, sb);
  for (size_t k = 0; k < ra.units.size(); ++k) EXPECT_EQ(ra.units[k].loss_end, rb.units[k].loss_end) << k;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i]->weight, b[i]->weight)) << b[i]->name;
}

TEST(OnnxModel, FoldsBatchNormAndPadsAsymmetricallyLikeTheGraph) {
  const std::string path = write_small_cnn(tmp_path("small.onnx"));
  auto m = OnnxModel::load(path);
  auto units = m->units();
  ASSERT_EQ(units.size(), 3u);  // conv+bn+relu | conv+relu | pool+flatten+gemm
  EXPECT_EQ(m->all_layers().size(), 3u);
  EXPECT_EQ(m->layer_source(m->all_layers()[0]->name).folded_bn, "h2_node");
  EXPECT_TRUE(m->layer_source(m->all_layers()[2]->name).transposed);
  EXPECT_EQ(m->all_layers().front()->role, LayerRole::Input);
  EXPECT_EQ(m->all_layers().back()->role, LayerRole::Output);
  ASSERT_EQ(units[2]->act_sites().size(), 1u);
  EXPECT_EQ(units[2]->act_sites()[0].role, SiteRole::ClassifierInput);
  EXPECT_TRUE(units[2]->act_sites()[0].non_negative);
  torch::manual_seed(1);
  torch::Tensor x = torch::randn({4, 3, 12, 12});
  torch::NoGradGuard ng;
  torch::Tensor graph = m->graph().run(x);  // the executor runs BatchNormalization unfolded
  EXPECT_LT((m->forward(x) - graph).abs().max().item<double>(), 1e-5);
  EXPECT_LT((graph - onnxruntime_run(path, x)).abs().max().item<double>(), 1e-5);
  fs::remove(path);
}

TEST(OnnxModel, GraphsWithoutLayersAreRefused) {
  flexquant::testing::expect_error<ModelError>(
      [] { OnnxModel::load("/usr/share/libonnx-testdata/data/node/test_relu/model.onnx"); }, {"nothing to quantize"});
}

// The check: the exported QDQ model run by ONNX Runtime gives flexquant's top-1 within 0.1 point; the
// weights it dequantizes are bit for bit the ones flexquant evaluated.
TEST(OnnxQdq, ResNet20W4A4RunsInOnnxRuntimeAsInFlexquant) {
  Workload w;
  w.model = shared_path("data/cifar10/resnet20.onnx");
  w.data = "cifar10:" + shared_path("data/cifar10/cifar10_test_00.bin");
  w.eval_start = 128;
  w.eval_limit = 800;
  auto task = make_task(w);
  EXPECT_EQ(task->arch(), "onnx");
  const std::string out = tmp_path("resnet20_w4a4.onnx");
  MethodResult r = run_method(*task, w4a4("rtn", 0), out);
  const double ort = task->evaluate_in_runtime(out, "onnxruntime");
  std::cout << "[ qdq ] flexquant " << r.metric << " %, ONNX Runtime " << ort << " % on 800 images\n";
  EXPECT_NEAR(ort, r.metric, 0.1 + 1e-9);
  EXPECT_GT(r.metric, 60.0);

  // The same run saved as .fqz and exported later (`flexquant export --to onnx`) gives the same file, byte for byte.
  const std::string fqz = tmp_path("resnet20_w4a4.fqz"), later = tmp_path("resnet20_w4a4_later.onnx");
  run_method(*task, w4a4("rtn", 0), fqz);
  export_onnx_file(fqz, later);
  auto bytes = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(bytes(out), bytes(later));

  // Dequantized weights: the exported DequantizeLinear nodes (folded at load) equal the quantized layers.
  auto model = task->load_model();
  QuantState state;
  load_qmodel(fqz, *model, state);
  auto back = OnnxModel::load(out);
  auto qa = model->all_layers(), qb = back->all_layers();
  ASSERT_EQ(qa.size(), qb.size());
  for (size_t i = 0; i < qa.size(); ++i) EXPECT_TRUE(torch::equal(qa[i]->weight, qb[i]->weight)) << qa[i]->name;
  for (const auto& p : {out, fqz, later}) fs::remove(p);
}

TEST(OnnxQdq, SmallCnnWithBatchNormExportsAndMatchesOnnxRuntime) {
  const std::string path = write_small_cnn(tmp_path("small_bn.onnx"));
  auto m = OnnxModel::load(path);
  torch::manual_seed(3);
  torch::Tensor calib = torch::randn({64, 3, 12, 12});
  Recipe r = w4a4("flexround", 20);
  r.calib_samples = 64;
  QuantState state;
  quantize(*m, calib, r, state);
  const std::string out = tmp_path("small_bn_qdq.onnx");
  QdqExportReport rep = export_qdq_onnx(path, *m, state, out);
  EXPECT_EQ(rep.batchnorms_folded, 1);
  EXPECT_EQ(rep.weights_quantized, 3);
  EXPECT_EQ(rep.activation_sites, 3);  // conv1 out, conv2 out, classifier input
  torch::Tensor x = torch::randn({4, 3, 12, 12});
  torch::NoGradGuard ng;
  torch::Tensor ours = quantized_forward(*m, state, x);
  torch::Tensor theirs = onnxruntime_run(out, x);
  EXPECT_LT((ours - theirs).abs().max().item<double>(), 1e-4);
  fs::remove(path);
  fs::remove(out);
}

TEST(OnnxQdq, GridsQdqCannotHoldAreRefusedByName) {
  const std::string path = write_small_cnn(tmp_path("small_fp4.onnx"));
  auto m = OnnxModel::load(path);
  Recipe r = w4a4("rtn", 0);
  r.act_bits = 32;
  r.weight_format = "fp4_e2m1";
  r.calib_samples = 16;
  QuantState state;
  quantize(*m, torch::randn({16, 3, 12, 12}), r, state);
  flexquant::testing::expect_error<ConfigError>([&] { export_qdq_onnx(path, *m, state, tmp_path("x.onnx")); },
                                                {"fp4_e2m1", "integer"});
  // A multipoint sum is several grids per weight; one DequantizeLinear holds one.
  Recipe mp = w4a4("multipoint", 0);
  mp.act_bits = 32;
  mp.rounder.extra["multipoint.points"] = 2;
  mp.calib_samples = 16;
  QuantState mstate;
  auto m2 = OnnxModel::load(path);
  quantize(*m2, torch::randn({16, 3, 12, 12}), mp, mstate);
  flexquant::testing::expect_error<ConfigError>([&] { export_qdq_onnx(path, *m2, mstate, tmp_path("x.onnx")); },
                                                {"multipoint sum", "single-grid method"});
  fs::remove(path);
}
