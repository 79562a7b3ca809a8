#!/usr/bin/python3
"""The naive PyTorch reconstruction step: issue #12's ratio baseline for bench/bench_step.

One Adam step of FlexRound block reconstruction written the obvious way in Python PyTorch (Debian python3-torch,
the same ATen as flexquant's LibTorch): autograd through element-wise ops, round with a straight-through
estimator, LSQ activation steps, the loss and a cosine learning rate, as the FlexRound / QDrop reference code does.

  resnet20 layer1.0  W4A4: per-tensor symmetric 4-bit weights, 4-bit unsigned LSQ activations after each ReLU,
                     batch 32 from 1,024 inputs [16,32,32] (the CNN table's setting)
  stories260k layers.0  W4: per-channel asymmetric 4-bit weights, no activation quantizers, batch 4 x 256 tokens
                     from 128 sequences (the LM table's setting)

Weights are the real ones (resnet20.safetensors, stories260K.bin); inputs are random (ReLU'd normals; the real
embedding rows of random token ids), which does not change the cost of a step. Prints one line per case:
  <case> <threads> <ms per step>
Usage: bench/step_baseline.py [--threads 1,2] [--steps 100] [--shared ../shared]
"""
import argparse
import json
import math
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F


def round_ste(x):
    return x + (torch.round(x) - x).detach()


class FlexRound:
    """W_hat = s1 * (clamp(round(W / (s1 * exp(d2 + d3 + d4))) + z, 0, qmax) - z), all factors learned in log space."""

    def __init__(self, w, bits, per_channel, symmetric):
        self.w = w
        qmax = 2 ** bits - 1
        dims = tuple(range(1, w.dim()))
        if per_channel:
            lo, hi = w.amin(dims, keepdim=True), w.amax(dims, keepdim=True)
        else:
            lo, hi = w.min().reshape([1] * w.dim()), w.max().reshape([1] * w.dim())
        if symmetric:
            s = torch.maximum(hi.abs(), lo.abs()) / (qmax // 2)
            self.z = torch.full_like(s, (qmax + 1) // 2)
        else:
            s = (hi - lo) / qmax
            self.z = torch.round(-lo / s)
        self.qmax = qmax
        self.d1 = torch.log(s).clone().requires_grad_(True)
        self.d2 = torch.zeros_like(w, requires_grad=True)
        self.d3 = torch.zeros([w.shape[0]] + [1] * (w.dim() - 1), requires_grad=True)
        self.d4 = torch.zeros([1, w.shape[1], 1, 1], requires_grad=True) if w.dim() == 4 else None

    def params(self):
        return [p for p in (self.d1, self.d2, self.d3, self.d4) if p is not None]

    def __call__(self):
        s1 = torch.exp(self.d1)
        logs = self.d2 + self.d3 + (self.d4 if self.d4 is not None else 0)
        q = torch.clamp(round_ste(self.w / (s1 * torch.exp(logs))) + self.z, 0, self.qmax)
        return s1 * (q - self.z)


class Lsq:
    """Unsigned LSQ activation quantizer with the gradient-scaled learned step."""

    def __init__(self, bits, step):
        self.qmax = 2 ** bits - 1
        self.step = torch.tensor(step, requires_grad=True)

    def __call__(self, x):
        g = 1.0 / math.sqrt(x.numel() * self.qmax)
        s = self.step * g + (self.step - self.step * g).detach()
        return torch.clamp(round_ste(x / s), 0, self.qmax) * s


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__" or v["dtype"] != "F32":
            continue
        a, b = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).copy()).reshape(v["shape"])
    return out


def resnet_case(shared):
    t = read_safetensors(f"{shared}/data/cifar10/resnet20.safetensors")
    w1, w2 = t["layer1.0.conv1.weight"], t["layer1.0.conv2.weight"]
    r1, r2 = FlexRound(w1, 4, False, True), FlexRound(w2, 4, False, True)
    a1, a2 = Lsq(4, 0.1), Lsq(4, 0.1)
    b1, b2 = torch.zeros(w1.shape[0]), torch.zeros(w2.shape[0])
    x_all = torch.relu(torch.randn(1024, 16, 32, 32))
    with torch.no_grad():
        h = torch.relu(F.conv2d(x_all, w1, b1, padding=1))
        y_all = torch.relu(F.conv2d(h, w2, b2, padding=1) + x_all)

    def block(x):
        h = a1(torch.relu(F.conv2d(x, r1(), b1, padding=1)))
        return a2(torch.relu(F.conv2d(h, r2(), b2, padding=1) + x))

    return block, r1.params() + r2.params(), [a1.step, a2.step], x_all, y_all, 32


def rms_norm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta=10000.0):
    T, hd = x.shape[1], x.shape[3]
    freq = theta ** (-2.0 * torch.arange(hd // 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]
    c, s = ang.cos().float().view(1, T, 1, -1), ang.sin().float().view(1, T, 1, -1)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2)


def llama_case(shared):
    raw = open(f"{shared}/data/lm/stories260K.bin", "rb").read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    vocab = abs(vocab)
    f = np.frombuffer(raw[28:], dtype=np.float32)
    kv = dim // n_heads * n_kv
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = torch.from_numpy(f[off:off + n].copy()).reshape(shape)
        off += n
        return a

    emb = take(vocab, dim)
    att_norm = take(n_layers, dim)[0]
    wq, wk, wv, wo = take(n_layers, dim, dim)[0], take(n_layers, kv, dim)[0], take(n_layers, kv, dim)[0], take(n_layers, dim, dim)[0]
    ffn_norm = take(n_layers, dim)[0]
    w1, w2, w3 = take(n_layers, hidden, dim)[0], take(n_layers, dim, hidden)[0], take(n_layers, hidden, dim)[0]
    r = {n: FlexRound(w, 4, True, False) for n, w in
         dict(wq=wq, wk=wk, wv=wv, wo=wo, w1=w1, w2=w2, w3=w3).items()}
    T, hd = 256, dim // n_heads
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)

    def layer(x, W):
        B = x.shape[0]
        h = rms_norm(x, att_norm)
        q = rope((h @ W["wq"].t()).view(B, T, n_heads, hd)).transpose(1, 2)
        k = rope((h @ W["wk"].t()).view(B, T, n_kv, hd)).transpose(1, 2)
        v = (h @ W["wv"].t()).view(B, T, n_kv, hd).transpose(1, 2)
        k, v = k.repeat_interleave(n_heads // n_kv, 1), v.repeat_interleave(n_heads // n_kv, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        a = torch.softmax(s.masked_fill(causal, float("-inf")), -1) @ v
        y = x + a.transpose(1, 2).reshape(B, T, dim) @ W["wo"].t()
        f_ = rms_norm(y, ffn_norm)
        return y + (F.silu(f_ @ W["w1"].t()) * (f_ @ W["w3"].t())) @ W["w2"].t()

    x_all = emb[torch.randint(vocab, (128, T))]
    with torch.no_grad():
        y_all = layer(x_all, dict(wq=wq, wk=wk, wv=wv, wo=wo, w1=w1, w2=w2, w3=w3))
    params = [p for fr in r.values() for p in fr.params()]
    return (lambda x: layer(x, {n: fr() for n, fr in r.items()})), params, [], x_all, y_all, 4


def time_steps(case, steps, lr=3e-3, act_lr=4e-5):
    forward, w_params, a_params, x_all, y_all, batch = case
    groups = [{"params": w_params, "lr": lr}] + ([{"params": a_params, "lr": act_lr}] if a_params else [])
    opt = torch.optim.Adam(groups)
    warm = 10
    for it in range(warm + steps):
        if it == warm:
            t0 = time.perf_counter()
        cos = 0.5 * (1 + math.cos(math.pi * it / (warm + steps)))
        opt.param_groups[0]["lr"] = lr * cos
        idx = torch.randint(x_all.shape[0], (batch,))
        y = forward(x_all[idx])
        loss = (y - y_all[idx]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    return (time.perf_counter() - t0) / steps * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--shared", default="../shared")
    a = ap.parse_args()
    torch.manual_seed(0)
    for name, make in (("resnet20/layer1.0", resnet_case), ("stories260k/layers.0", llama_case)):
        case = make(a.shared)
        for t in (int(s) for s in a.threads.split(",")):
            torch.set_num_threads(t)
            print(f"{name} {t} {time_steps(case, a.steps):.2f}", flush=True)


if __name__ == "__main__":
    main()
