#!/usr/bin/env python3
"""Rebuild a results table from a `flexquant compare` log whose run was stopped before it printed its table
(the per-method metric lines and per-unit "done:" lines are in the log). Used when a benchmark row was cut
short; the section says so. Usage: bench/table_from_log.py LOG > ROW.md"""
import re, sys

text = open(sys.argv[1]).read()
fp = re.search(r"^FP32 (.+?) = ([0-9.]+)$", text, re.M)
metric, fp_val = fp.group(1), float(fp.group(2))
ppl = metric == "perplexity"
print(f"| method | {metric} | delta vs FP | sum of unit times |\n|---|---|---|---|")
print(f"| FP32 | {fp_val:.2f} | - | - |")

def secs(s):
    m = re.match(r"(?:(\d+)m)?([0-9.]+)s", s)
    return 60 * int(m.group(1) or 0) + float(m.group(2))

for block in re.split(r"^== ", text, flags=re.M)[1:]:
    label = block.split(" (")[0]
    res = re.search(r"^" + re.escape(label) + r": .+? = ([0-9.]+)$", block, re.M)
    if not res:
        print(f"| {label} | stopped for time: not measured | - | - |")
        continue
    v = float(res.group(1))
    d = v - fp_val
    delta = f"{d:+.2f} ({100 * d / fp_val:+.1f} %)" if ppl else f"{d:+.2f}"
    t = sum(secs(m) for m in re.findall(r"done: loss .*?, (\S+)$", block, re.M))
    print(f"| {label} | {v:.2f} | {delta} | {int(t // 60)}m{int(t % 60):02d}s |")
