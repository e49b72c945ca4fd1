#!/usr/bin/env python3
"""Latency of two taskpath builds on the same model, interleaved in one run.

    scripts/bench_old_new.py OLD_BIN NEW_BIN [--rounds 15] [--runs 300]

Each binary packs models/reference/stage3 in its own format version (f32 and
i4g32), then the rounds alternate `OLD bench` and `NEW bench` (one repetition
of --runs inferences per task each), so both see the same machine load. Per
(task, format) the median over rounds of each binary's latency is compared;
prints the new/old ratio per row and their geometric mean. Used for the
format-v2 redesign's "no slower than today" check (docs/BENCHMARKS.md).
"""
import argparse, json, math, statistics, subprocess, sys, tempfile, os

ap = argparse.ArgumentParser()
ap.add_argument("old"); ap.add_argument("new")
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--runs", type=int, default=300)
ap.add_argument("--model", default="models/reference/stage3")
a = ap.parse_args()

tmp = tempfile.mkdtemp(prefix="bench-old-new-")
pk = {}
for who, binary in (("old", a.old), ("new", a.new)):
    for fmt in ("f32", "i4g32"):
        out = os.path.join(tmp, f"{who}-{fmt}.tpk")
        cmd = [binary, "pack", a.model, "-o", out] + ([] if fmt == "f32" else ["--quant", fmt])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        pk[(who, fmt)] = out

lat = {}
for r in range(a.rounds):
    order = (("old", a.old), ("new", a.new)) if r % 2 == 0 else (("new", a.new), ("old", a.old))
    for who, binary in order:
        files = [pk[(who, "f32")], pk[(who, "i4g32")]]
        res = subprocess.run([binary, "bench", *files, "-r", "1", "-n", str(a.runs), "-o", "json"],
                             check=True, capture_output=True, text=True)
        j = json.loads(res.stdout)
        for row in j["rows"]:
            fmt = "f32" if "f32" in row["package"] else "i4g32"
            lat.setdefault((row["task"], fmt, who), []).append(row["latency_us"][0])

print(f"{a.rounds} interleaved rounds x {a.runs} inferences per task; median latency (us)")
print("| task | format | old | new | new/old |")
print("|---|---|---:|---:|---:|")
ratios = []
for (task, fmt, who) in sorted(lat):
    if who != "old":
        continue
    o = statistics.median(lat[(task, fmt, "old")])
    n = statistics.median(lat[(task, fmt, "new")])
    ratios.append(n / o)
    print(f"| {task} | {fmt} | {o:.1f} | {n:.1f} | {n / o:.3f} |")
gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
print(f"\ngeometric mean new/old over {len(ratios)} rows: {gm:.3f}")
