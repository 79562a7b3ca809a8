// The ONNX reader on hostile input (issue #14): a tensor's dims are checked against the data the file holds before
// anything is allocated, and a constant subgraph LibTorch cannot run is a ModelError naming the file and the node.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <fstream>
#include <functional>

#include "flexquant/error.h"
#include "flexquant/onnx.h"
#include "hostile_input.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::write_temp;

namespace {

// A graph "x -> Identity -> y" plus whatever `edit` adds, written to `name`.
std::string onnx_file(const std::string& name, const std::function<void(onnx::GraphProto&)>& edit) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(13);
  onnx::GraphProto* g = m.mutable_graph();
  g->add_input()->set_name("x");
  g->add_output()->set_name("y");
  onnx::NodeProto* n = g->add_node();
  n->set_op_type("Identity");
  n->add_input("x");
  n->add_output("y");
  edit(*g);
  return write_temp(name, m.SerializeAsString());
}

}  // namespace

TEST(OnnxHostile, InitializerClaimingHugeDimsIsRefusedBeforeAllocating) {
  // dims 2^31 x 2^31 with 4 bytes of data: torch::empty was asked for 2^62 floats before the size check.
  const std::string p = onnx_file("huge.onnx", [](onnx::GraphProto& g) {
    onnx::TensorProto* t = g.add_initializer();
    t->set_name("w");
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(int64_t{1} << 31);
    t->add_dims(int64_t{1} << 31);
    t->set_raw_data(std::string(4, '\0'));
  });
  expect_error<ModelError>([&] { OnnxGraph::load(p); }, {"huge.onnx", "tensor \"w\"", "2^48"});
  const std::string neg = onnx_file("negative.onnx", [](onnx::GraphProto& g) {
    onnx::TensorProto* t = g.add_initializer();
    t->set_name("w");
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(-1);
    t->set_raw_data(std::string(4, '\0'));
  });
  expect_error<ModelError>([&] { OnnxGraph::load(neg); }, {"negative.onnx", "tensor \"w\"", ">= 0"});
}

TEST(OnnxHostile, TypedDataOfTheWrongCountIsAModelError) {
  // 3 floats for dims [2, 2]: reshape threw c10::Error, which named neither file nor tensor.
  const std::string p = onnx_file("count.onnx", [](onnx::GraphProto& g) {
    onnx::TensorProto* t = g.add_initializer();
    t->set_name("w");
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(2);
    t->add_dims(2);
    for (float v : {1.f, 2.f, 3.f}) t->add_float_data(v);
  });
  expect_error<ModelError>([&] { OnnxGraph::load(p); }, {"count.onnx", "tensor \"w\"", "holds 3 values"});
}

TEST(OnnxHostile, ConstantFoldingThatLibTorchRefusesNamesTheNode) {
  // Add of [2] and [3] constants folds at load; the error named the node but not the file.
  const std::string p = onnx_file("fold.onnx", [](onnx::GraphProto& g) {
    for (auto [name, n] : {std::pair<const char*, int>{"a", 2}, {"b", 3}}) {
      onnx::TensorProto* t = g.add_initializer();
      t->set_name(name);
      t->set_data_type(onnx::TensorProto::FLOAT);
      t->add_dims(n);
      for (int i = 0; i < n; ++i) t->add_float_data(1.f);
    }
    onnx::NodeProto* add = g.add_node();
    add->set_op_type("Add");
    add->set_name("bad_add");
    add->add_input("a");
    add->add_input("b");
    add->add_output("c");
  });
  expect_error<ModelError>([&] { OnnxGraph::load(p); }, {"fold.onnx", "bad_add", "Add", "folding constants"});
}
