#!/usr/bin/env python3
"""Prints a markdown table of the JSON results that bench/run.sh wrote."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    peers = r.get("peers", {})
    ort = peers.get("onnxruntime", {}).get("median_ms")
    tract = peers.get("tract", {}).get("median_ms")
    s = r["median_ms"]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"
    ratio = lambda p: f"{s / p:.2f}" if isinstance(p, (int, float)) and p > 0 else "-"
    rows.append(f"| {f.stem} | {fmt(s)} | {fmt(r.get('p90_ms'))} | {fmt(ort)} | {fmt(tract)} | {ratio(ort)} | {ratio(tract)} "
                f"| {fmt(r.get('compile_ms'))} | {r.get('peak_rss_bytes', 0) / 1e6:.0f} |")
print((out / "env.txt").read_text() if (out / "env.txt").exists() else "")
print("| config | sharc median ms | sharc p90 ms | onnxruntime ms | tract ms | sharc/ORT | sharc/tract | compile ms | peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
