#!/usr/bin/env python3
"""Taskpath against llama.cpp on the same model, interleaved in one run: llama-bench's pp/tg rows,
tok/s ratios, and each engine's share of the measured single-thread read bandwidth.

usage: bench_vs_llamacpp.py --gguf MODEL.gguf --tpk MODEL.tpk [--tpk OTHER.tpk ...]
                            [--threads 1,2] [--pp 512] [--tg 128] [--reps 5]
                            [--taskpath target/release/taskpath] [--out results.json]

Each repetition runs, for every thread count, one llama.cpp measurement (scripts/llm/llamacpp_bench.py:
one warm-up + one timed run of pp and tg) and one Taskpath measurement per package (`taskpath bench
-r 1`, which also warms up once), in alternating order, so drift on a shared machine hits both.
Both engines see the same random-token workload shape; llama.cpp runs with its defaults (f16 KV cache,
mmap, no flash attention), Taskpath with its f32 KV cache. Bandwidth share = weight bytes read per
token (Taskpath's count; llama.cpp reads the same experts) x tok/s / read GB/s measured by `taskpath
bench` in the same repetition. Prints a Markdown table; --out writes every sample as JSON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def llama(gguf, threads, pp, tg):
    out = subprocess.run([sys.executable, os.path.join(HERE, "llamacpp_bench.py"), gguf, "--threads", str(threads),
                          "--pp", str(pp), "--tg", str(tg), "--reps", "1"],
                         check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["test"]: r["samples_ts"][0] for r in rows}


def ours(binary, tpk, threads, pp, tg):
    out = subprocess.run([binary, "bench", tpk, "-p", str(pp), "-n", str(tg), "-r", "1", "--threads", str(threads),
                          "-o", "json"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return {row["test"]: (row["tok_s"][0], row["bytes_per_token"]) for row in r["rows"]}, r["read_gb_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--tpk", action="append", required=True)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--taskpath", default="target/release/taskpath")
    ap.add_argument("--out")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    samples = {}  # (engine, threads, test) -> [tok/s]
    bpt = {}
    bws = []
    for rep in range(a.reps):
        for t in threads:
            order = ["llama", *a.tpk] if rep % 2 == 0 else [*a.tpk, "llama"]
            for eng in order:
                if eng == "llama":
                    for test, ts in llama(a.gguf, t, a.pp, a.tg).items():
                        samples.setdefault(("llama.cpp", t, test), []).append(ts)
                else:
                    res, bw = ours(a.taskpath, eng, t, a.pp, a.tg)
                    bws.append(bw)
                    for test, (ts, b) in res.items():
                        samples.setdefault((os.path.basename(eng), t, test), []).append(ts)
                        bpt[test] = b
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    bw = statistics.median(bws)
    print(f"| engine | threads | test | t/s (mean ± sd, {a.reps} reps) | vs llama.cpp | GB/s read | of read bandwidth |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for (eng, t, test), v in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0] != "llama.cpp")):
        m, sd = statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
        base = statistics.mean(samples[("llama.cpp", t, test)])
        gb = bpt.get(test, 0) * m / 1e9 if test.startswith("tg") else float("nan")
        share = f"{100 * gb / bw:.0f}%" if test.startswith("tg") else "-"
        gbs = f"{gb:.2f}" if test.startswith("tg") else "-"
        print(f"| {eng} | {t} | {test} | {m:.2f} ± {sd:.2f} | {m / base:.3f} | {gbs} | {share} |")
    print(f"\nread bandwidth (median of taskpath bench's measurements): {bw:.2f} GB/s; "
          f"weight bytes per decoded token: {bpt.get(f'tg{a.tg}', 0) / 1e6:.2f} MB")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(dict(read_gb_s=bws, bytes_per_token=bpt,
                           samples={f"{e}|{t}|{s}": v for (e, t, s), v in samples.items()}), fh, indent=1)


if __name__ == "__main__":
    main()
