#!/usr/bin/env python3
"""Assembles the "ONNX path CNN table (issue #11)" section from out/bench_onnx_cnn (bench/run_onnx_cnn.sh)."""
import glob
import os
import re
import sys

out = sys.argv[1]


def table_rows(md):
    """label -> top-1 from a `flexquant compare --markdown` table."""
    rows = {}
    if not os.path.exists(md):
        return rows
    for line in open(md):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"[0-9.]+", cells[1]) and cells[0] != "FP32":
            rows[cells[0]] = float(cells[1])
    return rows


def ort_metrics(qdq_dir):
    """Recipe index -> ONNX Runtime top-1 of the exported QDQ file."""
    res = {}
    for f in glob.glob(os.path.join(qdq_dir, "*.onnx.ort")):
        m = re.search(r"= ([0-9.]+)", open(f).read())
        if m:
            res[int(os.path.basename(f).split("-")[0])] = float(m.group(1))
    return res


print("## ONNX path CNN table (issue #11)\n")
print("Script: `bench/run_onnx_cnn.sh <build> <iters> [models] [settings] [paths]`. Each model's `.onnx` export is")
print("quantized by the generic graph adapter (units, layers and sites found from the graph) with the CNN table's recipes")
print("(per-tensor symmetric MSE weights, first/last layer 8-bit, LSQ activations, batch 32, seed 1005), written as QDQ")
print("ONNX (`compare --out-format onnx`) and evaluated by ONNX Runtime 1.30.0 (`eval --runtime onnxruntime`); beside it")
print("the same recipes through the safetensors path (hand-written `resnet_cifar` adapter) in the same run. Calibration:")
print("CIFAR-10 test records 0-1023; evaluation: records 1024-9999 (8,976 images).\n")
print("How to read it. The two paths build the same units, layers and sites (test OnnxModel.ResNetUnitsLayersAndSites")
print("MatchTheHandWrittenAdapter) and, given the same weights, quantize bit for bit alike (test OnnxModel.SameWeights")
print("QuantizeBitForBitLikeTheHandWrittenAdapter: FlexRound+QDrop codes, grids and losses equal). The two files' weights")
print("are not the same floats: the exporter folded BatchNorm with its own arithmetic, flexquant folds the safetensors")
print("BN in float64, so the BN-folded weights differ by up to 1e-5. RTN, a function of the weights (and the activation")
print("grids calibrated on them) alone, agrees within 0.05; the trained methods follow different Adam trajectories from those last-bit differences, the same kind")
print("of run-to-run noise as the thread count (0.3 points at ResNet-20 W4A4, issue #14); AdaRound at W2A4 and 500")
print("iterations has not converged (below RTN on both paths) and moves by more. The ONNX Runtime column")
print("evaluates the exported QDQ file: its differences from flexquant's own number come from activations lying within")
print("float rounding of a 4-bit rounding boundary, where ONNX Runtime's conv accumulation order (FP logits differ by")
print("<= 2e-5) flips a code (`flexquant onnx --model 0-rtn.onnx` on the W4A4 RTN file: 5 of 8,976 predictions differ).\n")
print("| model | setting | iters/block | method | ONNX path | safetensors path | ONNX - safetensors | QDQ in ONNX Runtime | ORT - ONNX path |")
print("|---|---|---|---|---|---|---|---|---|")
cmds = []
for md in sorted(glob.glob(os.path.join(out, "*-onnx.md"))):
    stem = os.path.basename(md)[: -len("-onnx.md")]
    model, setting = stem.rsplit("-", 1)
    onnx_rows = table_rows(md)
    st_rows = table_rows(os.path.join(out, stem + "-safetensors.md"))
    ort = ort_metrics(os.path.join(out, stem + "-onnx.qdq"))
    cmd = os.path.join(out, stem + "-onnx.cmd")
    it = re.search(r"recon\.iters=(\d+)", open(cmd).read()) if os.path.exists(cmd) else None
    iters = it.group(1) if it else "?"
    for i, (label, v) in enumerate(onnx_rows.items()):
        st = st_rows.get(label)
        o = ort.get(i)
        f = lambda x: "-" if x is None else f"{x:.2f}"
        d = lambda a, b: "-" if a is None or b is None else f"{a - b:+.2f}"
        print(f"| {model} | {setting.upper()} | {iters} | {label.split(' W')[0] + (' +QDrop' if 'QDrop' in label else '')} | {v:.2f} | {f(st)} | {d(v, st)} | {f(o)} | {d(o, v)} |")
    for p in ("onnx", "safetensors"):
        c = os.path.join(out, f"{stem}-{p}.cmd")
        if os.path.exists(c):
            cmds.append(open(c).read().strip())
print("\nRuns:\n")
for c in cmds:
    print(f"- {c}")
