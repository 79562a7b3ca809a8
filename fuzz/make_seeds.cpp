// make_fuzz_seeds <out_dir> <shared_data_dir> <fashion_mnist_dir>: small, complete, valid inputs for the readers
// whose real files are too large to fuzz whole, in <out_dir>/<target>/ (scripts/fuzz.sh copies the real files
// beside them):
//   llama2c, llama_hf, gguf, safetensors: a 1-layer Llama (dim 8, 2 heads, 1 KV head; vocab 32, or
//     512 in GGUF to match tok512.bin) with
//     seeded random weights as llama2.c .bin, HF folder (config.json + separator + model.safetensors, fuzz_llama_hf's
//     input) and GGUF (Q8_0 and F16); and the real stories260K as Q8_0 GGUF;
//   cifar10: the first 1 and 3 records of the real test set; image: record 0 as PNG, JPEG and BMP;
//   npy: records 0-1 as uint8 NHWC, record 0 as float32 NCHW, their labels as int64;
//   idx: the first 2 real Fashion-MNIST test images and labels, plain and gzipped (fuzz_idx's input format).
#include <torch/torch.h>
#include <zlib.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "flexquant/gguf_llama.h"
#include "flexquant/llama.h"
#include "flexquant/runtime.h"

namespace fs = std::filesystem;
using namespace flexquant;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void put_floats(std::ofstream& out, const torch::Tensor& t) {
  torch::Tensor c = t.contiguous().to(torch::kFloat32);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * 4));
}

// llama2.c export.py legacy_export: header, then tensors stacked over layers, freq_cis, (no wcls: tied).
void write_llama2c(LlamaModel& m, const fs::path& path) {
  const LlamaConfig& c = m.config();
  std::ofstream out(path, std::ios::binary);
  const int32_t h[7] = {int32_t(c.dim), int32_t(c.hidden_dim), int32_t(c.n_layers), int32_t(c.n_heads),
                        int32_t(c.n_kv_heads), int32_t(c.vocab_size), int32_t(c.max_seq_len)};
  out.write(reinterpret_cast<const char*>(h), sizeof h);
  put_floats(out, m.tok_embeddings());
  auto stacked = [&](auto get) {
    for (int i = 0; i < c.n_layers; ++i) put_floats(out, get(m.layer(i)));
  };
  stacked([](LlamaDecoderLayer& l) { return l.attention_norm(); });
  for (int j : {0, 1, 2, 3}) stacked([j](LlamaDecoderLayer& l) { return l.layers()[j].weight; });
  stacked([](LlamaDecoderLayer& l) { return l.ffn_norm(); });
  for (int j : {4, 6, 5}) stacked([j](LlamaDecoderLayer& l) { return l.layers()[j].weight; });  // w1, w2, w3
  put_floats(out, m.final_norm());
  put_floats(out, torch::zeros({c.max_seq_len, c.head_dim() / 2}));  // freq_cis_real (unused by readers)
  put_floats(out, torch::zeros({c.max_seq_len, c.head_dim() / 2}));  // freq_cis_imag
}

std::string be32(uint32_t v) {
  return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

void put(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string gunzip(const fs::path& p) {
  gzFile f = gzopen(p.c_str(), "rb");
  std::string out;
  char buf[1 << 16];
  for (int n; f && (n = gzread(f, buf, sizeof buf)) > 0;) out.append(buf, n);
  if (f) gzclose(f);
  return out;
}

std::string gzip(const std::string& bytes, const fs::path& tmp) {
  gzFile f = gzopen(tmp.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
  std::string z = slurp(tmp);
  fs::remove(tmp);
  return z;
}

std::string npy(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + h.size() + 1) % 64) h += ' ';
  h += '\n';
  return std::string("\x93NUMPY\x01\x00", 8) + char(h.size() & 0xff) + char(h.size() >> 8) + h + data;
}

void write_data_seeds(const fs::path& out, const fs::path& shared, const fs::path& fmnist) {
  const std::string cifar = slurp(shared / "cifar10" / "cifar10_test_00.bin");
  const size_t rec = 3073;
  put(out / "cifar10" / "records-1.bin", cifar.substr(0, rec));
  put(out / "cifar10" / "records-3.bin", cifar.substr(0, 3 * rec));
  // record 0 as HWC RGB pixels
  std::string hwc(32 * 32 * 3, 0), hwc2;
  for (int r = 0; r < 2; ++r) {
    for (int i = 0; i < 1024; ++i)
      for (int c = 0; c < 3; ++c) hwc[i * 3 + c] = cifar[r * rec + 1 + c * 1024 + i];
    hwc2 += hwc;
    if (r == 0) {
      fs::create_directories(out / "image");
      stbi_write_png((out / "image" / "cifar0.png").c_str(), 32, 32, 3, hwc.data(), 32 * 3);
      stbi_write_jpg((out / "image" / "cifar0.jpg").c_str(), 32, 32, 3, hwc.data(), 90);
      stbi_write_bmp((out / "image" / "cifar0.bmp").c_str(), 32, 32, 3, hwc.data());
      stbi_write_png((out / "image" / "cifar0-8x8-gray.png").c_str(), 8, 8, 1, hwc.data(), 8);
    }
  }
  put(out / "npy" / "u8-nhwc.npy", npy("|u1", "2, 32, 32, 3", hwc2));
  std::string f32;
  for (int i = 0; i < 3 * 1024; ++i) {
    const float v = static_cast<unsigned char>(cifar[1 + i]) / 255.0f;
    f32.append(reinterpret_cast<const char*>(&v), 4);
  }
  put(out / "npy" / "f32-nchw.npy", npy("<f4", "1, 3, 32, 32", f32));
  std::string labels;
  for (int r = 0; r < 2; ++r) {
    const int64_t l = static_cast<unsigned char>(cifar[r * rec]);
    labels.append(reinterpret_cast<const char*>(&l), 8);
  }
  put(out / "npy" / "labels-i64.npy", npy("<i8", "2,", labels));

  const std::string img = gunzip(fmnist / "t10k-images-idx3-ubyte.gz"), lab = gunzip(fmnist / "t10k-labels-idx1-ubyte.gz");
  if (img.size() > 16 + 2 * 784 && lab.size() > 8 + 2) {
    const std::string img2 = img.substr(0, 4) + be32(2) + img.substr(8, 8) + img.substr(16, 2 * 784);
    const std::string lab2 = lab.substr(0, 4) + be32(2) + lab.substr(8, 2);
    put(out / "idx" / "plain.seed", img2 + "#labels#" + lab2);
    put(out / "idx" / "gz.seed", "z" + gzip(img2, out / "tmp.gz") + "#labels#z" + gzip(lab2, out / "tmp.gz"));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: make_fuzz_seeds <out_dir> <shared_data_dir> <fashion_mnist_dir>\n");
    return 2;
  }
  set_log_level(LogLevel::Error);
  const fs::path out = argv[1], shared = argv[2];
  fs::create_directories(out);
  write_data_seeds(out, shared, argv[3]);
  torch::manual_seed(14);
  auto tiny = [](int64_t vocab) {
    LlamaConfig c;
    c.dim = 8;
    c.hidden_dim = 16;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.vocab_size = vocab;
    c.max_seq_len = 16;
    auto model = std::make_unique<LlamaModel>(c);
    torch::NoGradGuard ng;
    for (const NamedTensor& nt : model->named_tensors()) nt.tensor->normal_(0, 0.1);
    return model;
  };
  auto m32 = tiny(32);
  LlamaModel& m = *m32;
  fs::create_directories(out / "llama2c");
  write_llama2c(m, out / "llama2c" / "tiny.bin");

  const auto hf_seed = [&](LlamaModel& model, const std::string& name) {
    save_llama_hf(model, (out / "hf").string());
    put(out / "safetensors" / ("llama-" + name), slurp(out / "hf" / "model.safetensors"));
    put(out / "llama_hf" / name,
        slurp(out / "hf" / "config.json") + "\n#model.safetensors#\n" + slurp(out / "hf" / "model.safetensors"));
    fs::remove_all(out / "hf");
  };
  hf_seed(m, "tiny.seed");
  auto stories = load_llama2c((shared / "lm" / "stories260K.bin").string());
  hf_seed(*stories, "stories260K.seed");  // the real config.json (its 1 MB shard is cut by -max_len)

  const Tokenizer tok = Tokenizer::load((shared / "lm" / "tok512.bin").string());
  fs::create_directories(out / "gguf");
  GgufExportOptions q8;
  q8.embedding_type = GgmlType::Q8_0;
  auto m512p = tiny(512);  // a GGUF holds its vocabulary: tok512.bin's 512 pieces
  export_gguf(*m512p, QuantState{}, tok, q8, (out / "gguf" / "tiny-q8_0.gguf").string());
  GgufExportOptions f16;
  f16.type = GgmlType::F16;
  f16.embedding_type = GgmlType::F16;
  export_gguf(*m512p, QuantState{}, tok, f16, (out / "gguf" / "tiny-f16.gguf").string());
  export_gguf(*stories, QuantState{}, tok, q8, (out / "gguf" / "stories260K-q8_0.gguf").string());
  std::printf("seeds written to %s\n", out.c_str());
  return 0;
}
