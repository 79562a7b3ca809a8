#!/usr/bin/env python3
"""Assembles the "ONNX path CNN table (issue #11)" section from out/bench_onnx_cnn (bench/run_onnx_cnn.sh), keeping
the published lines of the (model, setting) rows not rerun there."""
import glob
import os
import re
import subprocess
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
# Runs built from the commit that made the safetensors path fold BatchNorm as the exporter does (or later) load both
# files to the same floats; older runs did not.
FOLD = subprocess.run(["git", "log", "-1", "--format=%H", "--grep", "BN folding in the exporter's float32 arithmetic"],
                      capture_output=True, text=True).stdout.strip()


def fold_of(cmd_path):
    """'f32' if the run's binary was built from FOLD or a descendant, 'f64' if before it, '?' if unknown."""
    m = re.search(r"built from commit ([0-9a-f]+)", open(cmd_path).read()) if os.path.exists(cmd_path) else None
    if not m or not FOLD:
        return "?"
    r = subprocess.run(["git", "merge-base", "--is-ancestor", FOLD, m.group(1)], capture_output=True)
    return "f32" if r.returncode == 0 else "f64"


print("How to read it. The two paths build the same units, layers and sites (test OnnxModel.ResNetUnitsLayersAndSites")
print("MatchTheHandWrittenAdapter). The column *BN fold* says how the safetensors run folded BatchNorm. **f64**: runs")
print("built before commit \"BN folding in the exporter's float32 arithmetic\", when the safetensors path folded in")
print("float64 and its weights differed from the exporter's by up to 1e-5; RTN then agreed within 0.05 while the trained")
print("methods followed different Adam trajectories from those last bits (the same kind of run-to-run noise as the")
print("thread count, 0.3 points at ResNet-20 W4A4, issue #14). **f32**: since that commit both paths load bit for bit")
print("the same folded weights for ResNet-20/32/44 (same test), and FlexRound+QDrop run on each file as loaded gives the")
print("same losses, codes and grids bit for bit (test OnnxModel.SameWeightsQuantizeBitForBitLikeTheHandWrittenAdapter).")
print("AdaRound at W2A4 and 500 iterations has not converged (below RTN on both paths). The ONNX Runtime column")
print("evaluates the exported QDQ file: its differences from flexquant's own number come from activations lying within")
print("float rounding of a 4-bit rounding boundary, where ONNX Runtime's conv accumulation order (FP logits differ by")
print("<= 2e-5) flips a code (`flexquant onnx --model 0-rtn.onnx` on the W4A4 RTN file: 5 of 8,976 predictions differ).\n")


def kept_rows():
    """(model, setting) -> (table lines, run lines) of the section now in docs/RESULTS.md: rows that were not rerun
    into `out` (a fresh checkout has none of the earlier runs' files) keep their published lines."""
    path = "docs/RESULTS.md"
    if not os.path.exists(path):
        return {}
    m = re.search(r"^## ONNX path CNN table \(issue #11\)\n(.*?)(?=^## |\Z)", open(path).read(), re.S | re.M)
    kept = {}
    for line in (m.group(1).splitlines() if m else []):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| resnet") and len(cells) > 2:
            kept.setdefault((cells[0], cells[1].lower()), ([], []))[0].append(line)
        r = re.search(r"/(resnet\d+)\.(?:onnx|safetensors) .*weight\.bits=(\d+) --set act\.bits=(\d+)", line)
        if line.startswith("- ") and r:
            kept.setdefault((r.group(1), f"w{r.group(2)}a{r.group(3)}"), ([], []))[1].append(line[2:])
    return kept


def new_rows(md):
    """(table lines, run lines) of one (model, setting) run in `out`."""
    stem = os.path.basename(md)[: -len("-onnx.md")]
    model, setting = stem.rsplit("-", 1)
    onnx_rows = table_rows(md)
    st_rows = table_rows(os.path.join(out, stem + "-safetensors.md"))
    ort = ort_metrics(os.path.join(out, stem + "-onnx.qdq"))
    cmd = os.path.join(out, stem + "-onnx.cmd")
    it = re.search(r"recon\.iters=(\d+)", open(cmd).read()) if os.path.exists(cmd) else None
    iters = it.group(1) if it else "?"
    fold = fold_of(os.path.join(out, stem + "-safetensors.cmd"))
    lines = []
    f = lambda x: "-" if x is None else f"{x:.2f}"
    d = lambda a, b: "-" if a is None or b is None else f"{a - b:+.2f}"
    for i, (label, v) in enumerate(onnx_rows.items()):
        st = st_rows.get(label)
        o = ort.get(i)
        method = label.split(" W")[0] + (" +QDrop" if "QDrop" in label else "")
        lines.append(f"| {model} | {setting.upper()} | {iters} | {method} | {v:.2f} | {f(st)} | {d(v, st)} | {fold} | {f(o)} | {d(o, v)} |")
    cmds = [open(c).read().strip() for c in (os.path.join(out, f"{stem}-{p}.cmd") for p in ("onnx", "safetensors"))
            if os.path.exists(c)]
    return (model, setting), (lines, cmds)


rows = kept_rows()
rows.update(dict(new_rows(md) for md in glob.glob(os.path.join(out, "*-onnx.md"))))
print("| model | setting | iters/block | method | ONNX path | safetensors path | ONNX - safetensors | BN fold | QDQ in ONNX Runtime | ORT - ONNX path |")
print("|---|---|---|---|---|---|---|---|---|---|")
for key in sorted(rows, key=lambda k: f"{k[0]}-{k[1]}"):
    for line in rows[key][0]:
        print(line)
print("\nRuns:\n")
for key in sorted(rows, key=lambda k: f"{k[0]}-{k[1]}"):
    for c in rows[key][1]:
        print(f"- {c}")
