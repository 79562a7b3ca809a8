"""Reads the result tables `flexquant compare --markdown` writes, for the benchmark scripts' section assemblers."""
import re
import statistics


def rows(md):
    """{first word of the method label, lower-case: the row's cells} for every row with a numeric metric."""
    out = {}
    for line in open(md):
        c = [x.strip() for x in line.split("|")]
        if len(c) > 3 and re.match(r"^[0-9.]+$", c[2]):
            out[c[1].split()[0].lower()] = c
    return out


def metrics(md):
    """{"fp32": ..., "rtn": ..., "flexround": ...}: each row's metric."""
    return {k: float(c[2]) for k, c in rows(md).items()}


def mean_sd(vals, digits=2):
    """'x.xx' for one value, 'mean ± sample std' for several (`digits` decimals)."""
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"
