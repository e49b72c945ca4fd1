#!/usr/bin/env python3
"""Check the committed LLM oracle files (models/llm-tiny) against SHA256SUMS or a fresh regeneration.

usage: check_fixtures.py              every file listed in models/llm-tiny/SHA256SUMS has that sha256,
                                      and no unlisted file is there (stdlib only; no torch needed)
       check_fixtures.py --regen      also runs scripts/llm/oracles.sh into target/llm-check/{out,work}
                                      and compares the fresh SHA256SUMS with the committed one
       check_fixtures.py --fresh DIR  compare with an already regenerated OUT dir

On a mismatch of a .f32 file the max relative difference (max|a-b| / max|b|) is printed: on
another CPU or package version the transformers / llama.cpp floats may differ in the last bits
while everything else (models, GGUFs, token ids) should still match exactly.
Exit status 0 when everything matches.
"""
import argparse
import hashlib
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(ROOT, "models", "llm-tiny")
UNLISTED_OK = {"SHA256SUMS", "README.md"}


def read_sums(path):
    sums = {}
    with open(path) as fh:
        for line in fh:
            h, name = line.rstrip("\n").split(None, 1)
            sums[os.path.normpath(name)] = h
    return sums


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32_diff(a, b):
    import array
    x, y = array.array("f"), array.array("f")
    with open(a, "rb") as fh:
        x.frombytes(fh.read())
    with open(b, "rb") as fh:
        y.frombytes(fh.read())
    if len(x) != len(y):
        return f"length {len(x)} vs {len(y)}"
    ref = max(abs(v) for v in y) or 1.0
    return f"max_rel {max(abs(p - q) for p, q in zip(x, y)) / ref:.2e}"


def check_against_sums(tiny):
    sums = read_sums(os.path.join(tiny, "SHA256SUMS"))
    bad = 0
    for name, h in sorted(sums.items()):
        p = os.path.join(tiny, name)
        if not os.path.exists(p):
            print(f"MISSING  {name}")
            bad += 1
        elif sha256(p) != h:
            print(f"CHANGED  {name}")
            bad += 1
    for dp, _, fs in os.walk(tiny):
        for f in fs:
            name = os.path.normpath(os.path.relpath(os.path.join(dp, f), tiny))
            if name not in sums and name not in UNLISTED_OK:
                print(f"UNLISTED {name}")
                bad += 1
    print(f"{tiny}: {len(sums)} files listed in SHA256SUMS, {bad} problems")
    return bad


def compare(committed, fresh):
    a, b = read_sums(os.path.join(committed, "SHA256SUMS")), read_sums(os.path.join(fresh, "SHA256SUMS"))
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in b:
            print(f"NOT REGENERATED {name}")
        elif name not in a:
            print(f"NEW             {name}")
        elif a[name] != b[name]:
            extra = f"  ({f32_diff(os.path.join(fresh, name), os.path.join(committed, name))})" \
                if name.endswith(".f32") else ""
            print(f"DIFFERS         {name}{extra}")
        else:
            continue
        bad += 1
    print(f"fresh regeneration {fresh} vs {committed}: {len(a)} vs {len(b)} files, {bad} differ")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regen", action="store_true")
    ap.add_argument("--fresh")
    a = ap.parse_args()
    bad = check_against_sums(TINY)
    fresh = a.fresh
    if a.regen:
        fresh = os.path.join(ROOT, "target", "llm-check", "out")
        work = os.path.join(ROOT, "target", "llm-check", "work")
        subprocess.run([os.path.join(ROOT, "scripts", "llm", "oracles.sh"), fresh, work], check=True)
    if fresh:
        bad += compare(TINY, fresh)
    print("OK" if bad == 0 else f"FAILED ({bad})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
