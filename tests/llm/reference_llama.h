// Independent scalar reference of the Llama forward, llm.c / llama2.c style: plain loops over floats, one
// token at a time with a KV cache, reading the llama2.c .bin directly (freq_cis NOT used: the angles are
// recomputed as run.c does). Written apart from src/ so tests compare two implementations, not one.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace flexquant::reference {

struct RefLlama {
  int dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len;
  bool shared;
  std::vector<float> data;  // all floats after the header
  const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;

  explicit RefLlama(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("RefLlama: cannot open " + path);
    size_t bytes = static_cast<size_t>(f.tellg());
    f.seekg(0);
    int32_t h[7];
    f.read(reinterpret_cast<char*>(h), sizeof h);
    dim = h[0]; hidden = h[1]; n_layers = h[2]; n_heads = h[3]; n_kv_heads = h[4];
    shared = h[5] > 0; vocab = shared ? h[5] : -h[5]; seq_len = h[6];
    data.resize((bytes - sizeof h) / 4);
    f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * 4));
    int hs = dim / n_heads, kv = hs * n_kv_heads;
    const float* p = data.data();
    auto take = [&](size_t n) { const float* q = p; p += n; return q; };
    emb = take((size_t)vocab * dim);
    rms_att = take((size_t)n_layers * dim);
    wq = take((size_t)n_layers * dim * dim);
    wk = take((size_t)n_layers * kv * dim);
    wv = take((size_t)n_layers * kv * dim);
    wo = take((size_t)n_layers * dim * dim);
    rms_ffn = take((size_t)n_layers * dim);
    w1 = take((size_t)n_layers * hidden * dim);
    w2 = take((size_t)n_layers * dim * hidden);
    w3 = take((size_t)n_layers * hidden * dim);
    rms_final = take(dim);
    take((size_t)seq_len * hs / 2);  // freq_cis_real
    take((size_t)seq_len * hs / 2);  // freq_cis_imag
    wcls = shared ? emb : take((size_t)vocab * dim);
  }

  static void rmsnorm(float* o, const float* x, const float* w, int n) {
    float ss = 0;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss = 1.0f / std::sqrt(ss / n + 1e-5f);
    for (int j = 0; j < n; j++) o[j] = w[j] * (ss * x[j]);
  }
  // xout[d] = W[d, n] @ x[n]
  static void matmul(float* xout, const float* x, const float* w, int n, int d) {
    for (int i = 0; i < d; i++) {
      double v = 0;
      for (int j = 0; j < n; j++) v += (double)w[(size_t)i * n + j] * x[j];
      xout[i] = (float)v;
    }
  }

  /// Logits [T, vocab] for one sequence, token by token with a KV cache (run.c's forward()).
  std::vector<float> forward(const std::vector<int>& tokens) const {
    const int T = (int)tokens.size(), hs = dim / n_heads, kvd = hs * n_kv_heads, kv_mul = n_heads / n_kv_heads;
    std::vector<float> x(dim), xb(dim), xb2(dim), hb(hidden), hb2(hidden), q(dim), att(T);
    std::vector<float> kc((size_t)n_layers * T * kvd), vc((size_t)n_layers * T * kvd);
    std::vector<float> out((size_t)T * vocab);
    for (int pos = 0; pos < T; pos++) {
      std::memcpy(x.data(), emb + (size_t)tokens[pos] * dim, dim * sizeof(float));
      for (int l = 0; l < n_layers; l++) {
        rmsnorm(xb.data(), x.data(), rms_att + (size_t)l * dim, dim);
        float* kr = &kc[((size_t)l * T + pos) * kvd];
        float* vr = &vc[((size_t)l * T + pos) * kvd];
        matmul(q.data(), xb.data(), wq + (size_t)l * dim * dim, dim, dim);
        matmul(kr, xb.data(), wk + (size_t)l * kvd * dim, dim, kvd);
        matmul(vr, xb.data(), wv + (size_t)l * kvd * dim, dim, kvd);
        for (int i = 0; i < dim; i += 2) {  // RoPE on adjacent pairs
          int head_dim = i % hs;
          float freq = 1.0f / std::pow(10000.0f, head_dim / (float)hs);
          float val = pos * freq, fcr = std::cos(val), fci = std::sin(val);
          int rotn = i < kvd ? 2 : 1;
          for (int v = 0; v < rotn; v++) {
            float* vec = v == 0 ? q.data() : kr;
            float v0 = vec[i], v1 = vec[i + 1];
            vec[i] = v0 * fcr - v1 * fci;
            vec[i + 1] = v0 * fci + v1 * fcr;
          }
        }
        for (int h = 0; h < n_heads; h++) {
          const float* qh = &q[(size_t)h * hs];
          float mx = -1e30f;
          for (int t = 0; t <= pos; t++) {
            const float* k = &kc[((size_t)l * T + t) * kvd + (size_t)(h / kv_mul) * hs];
            float s = 0;
            for (int i = 0; i < hs; i++) s += qh[i] * k[i];
            att[t] = s / std::sqrt((float)hs);
            mx = std::max(mx, att[t]);
          }
          float sum = 0;
          for (int t = 0; t <= pos; t++) { att[t] = std::exp(att[t] - mx); sum += att[t]; }
          float* o = &xb[(size_t)h * hs];
          for (int i = 0; i < hs; i++) o[i] = 0;
          for (int t = 0; t <= pos; t++) {
            const float* v = &vc[((size_t)l * T + t) * kvd + (size_t)(h / kv_mul) * hs];
            for (int i = 0; i < hs; i++) o[i] += att[t] / sum * v[i];
          }
        }
        matmul(xb2.data(), xb.data(), wo + (size_t)l * dim * dim, dim, dim);
        for (int i = 0; i < dim; i++) x[i] += xb2[i];
        rmsnorm(xb.data(), x.data(), rms_ffn + (size_t)l * dim, dim);
        matmul(hb.data(), xb.data(), w1 + (size_t)l * dim * hidden, dim, hidden);
        matmul(hb2.data(), xb.data(), w3 + (size_t)l * dim * hidden, dim, hidden);
        for (int i = 0; i < hidden; i++) {
          float v = hb[i];
          v *= 1.0f / (1.0f + std::exp(-v));
          hb[i] = v * hb2[i];
        }
        matmul(xb.data(), hb.data(), w2 + (size_t)l * dim * hidden, hidden, dim);
        for (int i = 0; i < dim; i++) x[i] += xb[i];
      }
      rmsnorm(x.data(), x.data(), rms_final, dim);
      matmul(&out[(size_t)pos * vocab], x.data(), wcls, dim, vocab);
    }
    return out;
  }
};

}  // namespace flexquant::reference
