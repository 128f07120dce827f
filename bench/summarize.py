#!/usr/bin/env python3
"""Prints a markdown summary of what bench/run.sh wrote into a results folder
(model rows with peers and ratios, the load average around each row, the top
of each profile, and the kernel figures next to numpy's), and writes the same
facts as one JSON file, `summary.json`, in that folder.
"""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def load_of(name):
    f = out / f"{name}.load"
    if not f.exists():
        return {}
    return dict(line.split(": ", 1) for line in f.read_text().splitlines() if ": " in line)


rows, facts = [], {"rows": {}}
for f in sorted(out.glob("*.json")):
    if f.name == "summary.json":
        continue
    r = json.loads(f.read_text())
    peers = r.get("peers", {})
    ort = peers.get("onnxruntime", {}).get("median_ms")
    tract = peers.get("tract", {}).get("median_ms")
    # A peer that ran a converted file (not the original) is marked.
    tract_text = fmt(tract) + (" (converted)" if peers.get("tract", {}).get("model") else "")
    # tract times on one thread when that beat the pool in its warm-up.
    tract_threads = peers.get("tract", {}).get("threads")
    if tract is not None and tract_threads not in (None, r.get("threads")):
        tract_text += f" ({tract_threads} thr)"
    s = r["median_ms"]

    def ratio(p, name):
        # With alternating rounds (--rounds), the median of the per-round
        # ratios is the fairer figure on a shared machine; rounds in brackets.
        of_rounds = peers.get(name, {}).get("ratio_median_of_rounds")
        if of_rounds is not None:
            return f"{of_rounds:.2f} ({len(r.get('rounds', []))} rounds)"
        return f"{s / p:.2f}" if isinstance(p, (int, float)) and p > 0 else "-"

    load = load_of(f.stem)
    rows.append(f"| {f.stem} | {r.get('backend', '-')} | {fmt(s)} | {fmt(r.get('p90_ms'))} | {fmt(ort)} | {tract_text} "
                f"| {ratio(ort, 'onnxruntime')} | {ratio(tract, 'tract')} | {fmt(r.get('compile_ms'))} | {r.get('peak_rss_bytes', 0) / 1e6:.0f} "
                f"| {load.get('before', '-')} → {load.get('after', '-')} |")
    facts["rows"][f.stem] = {**r, "load": load}

print((out / "env.txt").read_text() if (out / "env.txt").exists() else "")
print("| config | backend | sharc median ms | sharc p90 ms | onnxruntime ms | tract ms | sharc/ORT | sharc/tract "
      "| compile ms | peak RSS MB | load (1/5/15 min) before → after |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))

# tract's outputs on reference inputs against onnxruntime's (tract-check.txt).
check = out / "tract-check.txt"
if check.exists():
    print("\n## tract's outputs against onnxruntime's references (first 8 rows of the reference inputs)\n")
    facts["tract_check"] = {}
    for line in check.read_text().splitlines():
        model, _, text = line.partition(": ")
        try:
            diffs = json.loads(text).get("check", [])
        except json.JSONDecodeError:
            diffs = None
        if diffs:
            for c in diffs:
                print(f"- {model}: `{c['output']}` {c['shape']} max abs diff {c['max_abs_diff']:.2e}")
        else:
            print(f"- {model}: no comparison (the peer failed or the file holds no output): {text or '-'}")
        facts["tract_check"][model] = diffs

profiled = [(k, v) for k, v in facts["rows"].items() if v.get("profile")]
if profiled:
    print("\n## Where the time goes (instrumented runs, per run; top entries)\n")
    for name, r in profiled:
        total = sum(p["ms_per_run"] for p in r["profile"])
        print(f"### {name} (profiled total of listed steps {total:.2f} ms)\n")
        print("| ms/run | share | steps | what |\n|---|---|---|---|")
        for p in r["profile"][:12]:
            print(f"| {p['ms_per_run']:.3f} | {100 * p['ms_per_run'] / max(total, 1e-9):.1f}% | {p['steps']} | {p['label']} |")
        print()

# Kernel figures: sharc's GEMM next to numpy's on the same shapes.
kern, numpy = out / "kernels.txt", out / "gemm_numpy.txt"
if kern.exists():
    sharc_gemm, np_gemm = {}, {}
    # Each line: shape, then per GEMM "wall (per CPU-second)": packed, crate, Cranelift.
    for line in kern.read_text().splitlines():
        m = re.match(r"\s*(\d+x\d+x\d+x\d+)\s+([\d.]+)\s+\(([\d.]+)\)\s+([\d.]+)\s+\(([\d.]+)\)"
                     r"\s+([\d.]+)\s+\(([\d.]+)\)\s+(.*)", line)
        if m:
            sharc_gemm[m[1]] = (float(m[2]), float(m[4]), float(m[6]), m[8].strip())
    if numpy.exists():
        for line in numpy.read_text().splitlines():
            m = re.match(r"\s*(\d+x\d+x\d+x\d+)\s+numpy\s+([\d.]+)", line)
            if m:
                np_gemm[m[1]] = float(m[2])
    print("## GEMM (GFLOP/s, median; batch x m x n x k)\n")
    print("| shape | sharc (packed) | sharc (gemm crate) | sharc (Cranelift kernel) | numpy/OpenBLAS | packed/numpy | what |")
    print("|---|---|---|---|---|---|---|")
    for shape, (packed, crate, cl, what) in sharc_gemm.items():
        n = np_gemm.get(shape)
        print(f"| {shape} | {packed:.1f} | {crate:.1f} | {cl:.1f} | {fmt(n)} | {fmt(packed / n) if n else '-'} | {what} |")
    facts["gemm"] = {s: {"sharc_packed": v[0], "sharc_crate": v[1], "sharc_cranelift": v[2], "numpy": np_gemm.get(s),
                         "what": v[3]} for s, v in sharc_gemm.items()}
    fused = [line.strip() for line in kern.read_text().splitlines()
             if ("GB/s" in line or "GFLOP/s" in line) and line.startswith("  ")]
    if fused:
        print("\n## Fused kernels\n")
        for line in fused:
            print(f"- {line}")
        facts["fused"] = fused
(out / "summary.json").write_text(json.dumps(facts, indent=1))
