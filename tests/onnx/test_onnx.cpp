// ONNX import checked by ONNX Runtime itself (onnxruntime-node, set up by scripts/setup.sh) on the real ResNets, and
// per op against the ONNX project's own backend node tests (Debian libonnx-testdata).
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/onnx.h"
#include "flexquant/onnxruntime.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::shared_path;

TEST(OnnxImport, RealResNetsMatchOnnxRuntimeAndTheSafetensorsModel) {
  auto data = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin"));
  torch::Tensor x = data.images.slice(0, 0, 64);
  for (const char* name : {"resnet20", "resnet32", "resnet44"}) {
    OnnxGraph g = OnnxGraph::load(shared_path(std::string("data/cifar10/") + name + ".onnx"));
    for (const auto& n : g.nodes)  // the exporter's shape subgraphs were folded at load
      EXPECT_TRUE(n.op != "Constant" && n.op != "ConstantOfShape" && n.op != "Cast" && n.op != "Concat") << n.op;
    torch::Tensor ours = g.run(x);
    torch::Tensor ort = onnxruntime_run(g.path, x);
    const double d_ort = (ours - ort).abs().max().item<double>();
    auto st = load_image_classifier(shared_path(std::string("data/cifar10/") + name + ".safetensors"), "resnet_cifar");
    torch::NoGradGuard ng;
    const double d_st = (ours - st->forward(x)).abs().max().item<double>();
    std::cout << "[ onnx ] " << name << ": max |logit diff| vs ONNX Runtime " << d_ort << ", vs safetensors " << d_st << "\n";
    EXPECT_LT(d_ort, 1e-4) << name;
    EXPECT_LT(d_st, 1e-4) << name;
    EXPECT_TRUE(torch::equal(ours.argmax(1), ort.argmax(1))) << name;
  }
}

TEST(OnnxImport, BadModelsNameTheProblem) {
  flexquant::testing::expect_error<IoError>([] { OnnxGraph::load("/nonexistent/model.onnx"); }, {"/nonexistent/model.onnx"});
  // An op outside the supported set: named with its node and the list (LRN from the ONNX test data).
  flexquant::testing::expect_error<ModelError>(
      [] { OnnxGraph::load("/usr/share/libonnx-testdata/data/node/test_lrn/model.onnx"); },
      {"op LRN", "supported ops: ", "Conv"});
}

// Every case of the ONNX backend node tests whose model uses only supported ops, reported per op (a case that fails
// at load is counted under "(load)"). The test fails on any failing case outside the known gaps below, each with its
// reason, and when a known gap starts passing (so the list stays true).
TEST(OnnxConformance, BackendNodeTestsPerOp) {
  const std::set<std::string> known = {
      // 1-D and 3-D pooling: the executor pools NCHW images only.
      "test_averagepool_1d_default", "test_averagepool_3d_default", "test_maxpool_1d_default", "test_maxpool_3d_default",
      // MaxPool's optional Indices output.
      "test_maxpool_with_argmax_2d_precomputed_pads", "test_maxpool_with_argmax_2d_precomputed_strides",
      // BatchNormalization training mode (running statistics as outputs): inference only.
      "test_batchnorm_epsilon_training_mode", "test_batchnorm_example_training_mode",
      // bfloat16 and string tensors.
      "test_cast_BFLOAT16_to_FLOAT", "test_cast_FLOAT_to_BFLOAT16", "test_cast_FLOAT_to_STRING", "test_cast_STRING_to_FLOAT",
      "test_castlike_BFLOAT16_to_FLOAT_expanded", "test_castlike_FLOAT_to_BFLOAT16_expanded",
      "test_castlike_FLOAT_to_STRING_expanded", "test_castlike_STRING_to_FLOAT_expanded",
      // Optional and sequence values (not tensors).
      "test_identity_opt", "test_identity_sequence"};
  auto results = onnx_node_conformance("/usr/share/libonnx-testdata/data/node");
  int passed = 0;
  for (const auto& r : results) {
    passed += r.passed;
    if (!r.passed) std::cout << "[ conformance ] FAIL " << r.case_name << ": " << r.message.substr(0, 160) << "\n";
    if (known.count(r.case_name)) EXPECT_FALSE(r.passed) << r.case_name << " passes now: remove it from the known gaps";
    else EXPECT_TRUE(r.passed) << r.case_name << ": " << r.message;
  }
  auto per_op = onnx_conformance_by_op(results);
  for (const auto& [op, c] : per_op) std::cout << "[ conformance ] " << op << " " << c.passed << "/" << c.total << "\n";
  std::cout << "[ conformance ] " << passed << " of " << results.size() << " cases pass\n";
  for (const auto& op : onnx_supported_ops()) {
    if (op == "Constant") continue;  // folded at load: no node of its own to test
    EXPECT_GT(per_op[op].passed, 0) << op << " has no passing case in the ONNX test data";
  }
}
