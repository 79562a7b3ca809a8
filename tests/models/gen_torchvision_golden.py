#!/usr/bin/python3
"""Golden logits for flexquant's torchvision-layout CNN adapters (tests/models/test_cnn.cpp).

Run with Debian's python3-torch / python3-torchvision (use /usr/bin/python3, not the pyenv python3):
    /usr/bin/python3 tests/models/gen_torchvision_golden.py
Writes tests/models/golden/torchvision_<arch>.safetensors for resnet18, resnet50 and mobilenet_v2.

The weights are NOT stored (tens of MB). Both sides rebuild them from one seed: libtorch's CPU generator is
the same mt19937 in Python and C++, so torch.manual_seed(SEED) followed by the same sequence of
torch.randn / torch.rand calls gives identical tensors. The fill rule (keep it in sync with
fill_weights() in test_cnn.cpp), for every state-dict entry in sorted name order, skipping
*num_batches_tracked:
    *.running_var           rand(shape) * 0.5 + 0.5
    *.running_mean          randn(shape) * 0.1
    dim >= 2 (conv/linear)  randn(shape) * sqrt(2 / fan_in),  fan_in = prod(shape[1:])
    1-d *.weight (BN gamma) randn(shape) * 0.1 + 1
    1-d *.bias              randn(shape) * 0.1
then the input x = randn(2, 3, 64, 64). The file holds the model's eval-mode logits for x, the float64
sum of every generated tensor (to tell an RNG mismatch from a forward mismatch), and in __metadata__ the
state-dict names and shapes in fill order.
"""
import json
import math
import os
import struct

import torch
import torchvision

SEED = 20230601
VERSION = "1"


def fill(model):
    sd = model.state_dict()
    torch.manual_seed(SEED)
    order, sums = [], []
    with torch.no_grad():
        for name in sorted(sd):
            t = sd[name]
            shape = list(t.shape)
            order.append([name, shape])
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                v = torch.rand(shape) * 0.5 + 0.5
            elif name.endswith("running_mean"):
                v = torch.randn(shape) * 0.1
            elif len(shape) >= 2:
                v = torch.randn(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
            elif name.endswith(".weight"):
                v = torch.randn(shape) * 0.1 + 1
            else:
                v = torch.randn(shape) * 0.1
            t.copy_(v)
            sums.append(v.double().sum().item())
    x = torch.randn(2, 3, 64, 64)
    return order, torch.tensor(sums, dtype=torch.float64), x


def save(path, tensors, metadata):
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        dt = {torch.float32: "F32", torch.float64: "F64"}[t.dtype]
        b = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    for arch in ["resnet18", "resnet50", "mobilenet_v2"]:
        model = getattr(torchvision.models, arch)(weights=None).eval()
        order, sums, x = fill(model)
        with torch.no_grad():
            logits = model(x)
        meta = {
            "generated_by": "tests/models/gen_torchvision_golden.py",
            "version": VERSION,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "arch": arch,
            "seed": str(SEED),
            "order": json.dumps(order),
        }
        path = os.path.join(out_dir, f"torchvision_{arch}.safetensors")
        save(path, {"logits": logits, "checksums": sums}, meta)
        print(f"{arch}: {len(order)} state-dict entries, logits {tuple(logits.shape)}, "
              f"|logits| max {logits.abs().max().item():.4g} -> {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
