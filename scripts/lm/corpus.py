#!/usr/bin/env python3
"""Build the multi-domain text corpus for the lm-domains MoE model from installed Debian packages.

Usage:
    python3 scripts/lm/corpus.py [--out models/lm-domains/corpus] [--check]

Needs only the Python standard library, groff (groff-base) and the packages listed in
scripts/lm/install-corpus-packages.sh. Every domain is read from the files that `dpkg -L <package>`
lists, so files installed by other packages never leak in.

Output (per domain D, see DOMAINS below):
    OUT/D/train.txt   full training split (TRAIN_BUDGET bytes at most; gitignored, rebuilt)
    OUT/D/calib.txt   first CALIB_BUDGET bytes of train.txt, cut at a line end (committed)
    OUT/D/val.txt     validation split (EVAL_BUDGET bytes at most, committed)
    OUT/D/test.txt    test split (EVAL_BUDGET bytes at most, committed)
    OUT/MANIFEST.json package versions, document counts, bytes and sha256 of every file above

Split rule (documented in models/lm-domains/CORPUS.md):
    key(doc)    = sha256("<domain>/<doc id>" as UTF-8), hex
    bucket(doc) = int(key[:8], 16) % 20  ->  0: test, 1: val, 2..19: train
    Each split takes its documents in ascending key order. Each document is normalised, cut to its first
    DOC_CAP bytes at a line end, followed by one blank line, and appended until the split's byte budget
    is reached; the document that would overflow the budget is cut at a line end and the split ends.

--check rebuilds into a temporary directory and compares sha256 with OUT/MANIFEST.json.
"""
import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

TRAIN_BUDGET = 2 << 20   # 2 MiB per domain (es-man has only ~1.2 MB of capped train text)
EVAL_BUDGET = 32 << 10   # 32 KiB per domain for val and for test
CALIB_BUDGET = 32 << 10  # 32 KiB prefix of train, committed for runtime path calibration
DOC_CAP = 8 << 10        # at most the first 8 KiB of any one document

GROFF = ["groff", "-k", "-Kutf8", "-t", "-mandoc", "-Tutf8", "-P-cbou", "-rLL=78n", "-rHY=0"]
ENV = {"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "TZ": "UTC"}

PACKAGES = {
    "en-bible": ["bible-kjv", "bible-kjv-text"],
    "rust": ["rust-src"],
    "python": ["libpython3.11-stdlib", "libpython3.11-minimal"],
    "c-headers": ["libc6-dev", "linux-libc-dev"],
    "de-man": ["manpages-de"],
    "fr-man": ["manpages-fr"],
    "es-man": ["manpages-es"],
}
TOOLS = ["groff-base"]


def dpkg_files(pkgs):
    out = []
    for p in pkgs:
        r = subprocess.run(["dpkg", "-L", p], capture_output=True, text=True, check=True, env=ENV)
        out += [l for l in r.stdout.splitlines() if l]
    # regular files only (symlinks are aliases of other documents)
    return sorted(set(f for f in out if os.path.isfile(f) and not os.path.islink(f)))


def dpkg_version(p):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], capture_output=True, text=True, env=ENV)
    return r.stdout.strip() if r.returncode == 0 else None


_CTRL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def normalize(text):
    """Line ends to \\n, drop control chars except \\t and \\n, strip trailing blanks of each line,
    at most one blank line in a row, no leading blank lines, exactly one final \\n."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CTRL.sub("", text)
    text = "\n".join(l.rstrip() for l in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text else ""


def head(text, cap):
    """Longest prefix of whole lines (each ending in \\n) whose UTF-8 size is <= cap."""
    out, n = [], 0
    for line in text.splitlines(keepends=True):
        b = len(line.encode("utf-8"))
        if n + b > cap:
            break
        out.append(line)
        n += b
    return "".join(out)


def read_utf8(path):
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---- domains: each yields (doc_id, loader) with a lazy loader returning text or None ----

def docs_bible():
    # The `bible` program (bible-kjv) decodes /usr/lib/bible.data (bible-kjv-text); -l100000 = no wrapping.
    r = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], capture_output=True, check=True, env=ENV)
    text = r.stdout.decode("utf-8")
    chapters = re.split(r"\n(?=[^\n ][^\n]* \d+\n\n)", "\n" + text.lstrip("\n"))
    docs = []
    for ch in chapters:
        ch = ch.strip("\n")
        if not ch:
            continue
        title = ch.split("\n", 1)[0]          # e.g. "Genesis 1"
        docs.append((title, (lambda c=ch: c)))
    assert len(docs) == 1189, len(docs)
    return docs


def docs_files(pkgs, pred):
    return [(f.lstrip("/"), (lambda f=f: read_utf8(f))) for f in dpkg_files(pkgs) if pred(f)]


def render_man(path):
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    src = raw.decode("utf-8", errors="replace")
    body = [l for l in src.splitlines() if l.strip() and not l.startswith(('.\\"', "'\\\"", '.\\}'))]
    if body and body[0].startswith(".so "):
        return None                               # alias page (".so other.1")
    r = subprocess.run(GROFF, input=raw, capture_output=True, env=ENV)
    if r.returncode != 0:
        return None
    out = r.stdout.decode("utf-8", errors="strict")
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)      # SGR escapes (none expected with -P-c)
    out = re.sub(r".\x08", "", out)               # overstrike (none expected with -P-bou)
    # undo justification: collapse runs of blanks inside a line, keep the indentation
    out = "\n".join(re.sub(r"(?<=\S) {2,}", " ", l) for l in out.split("\n"))
    return out


def man_docs(pkg):
    return [(f.lstrip("/"), (lambda f=f: render_man(f)))
            for f in dpkg_files([pkg]) if re.search(r"/man/[^/]+/man\d[^/]*/[^/]+\.gz$", f)]


DOMAINS = {
    "en-bible": docs_bible,
    "rust": lambda: docs_files(PACKAGES["rust"], lambda f: f.endswith(".rs") and
                               ("/library/" in f or "/compiler/" in f)),
    "python": lambda: docs_files(PACKAGES["python"], lambda f: f.endswith(".py")),
    "c-headers": lambda: docs_files(PACKAGES["c-headers"], lambda f: f.endswith(".h")),
    "de-man": lambda: man_docs("manpages-de"),
    "fr-man": lambda: man_docs("manpages-fr"),
    "es-man": lambda: man_docs("manpages-es"),
}


def key(domain, doc_id):
    return hashlib.sha256(f"{domain}/{doc_id}".encode("utf-8")).hexdigest()


def split_of(k):
    b = int(k[:8], 16) % 20
    return "test" if b == 0 else "val" if b == 1 else "train"


def fill(docs, budget):
    """docs: list of (key, doc_id, loader) in key order. Returns (text, ids_used, n_skipped)."""
    parts, size, used, skipped = [], 0, [], 0
    for k, doc_id, load in docs:
        if size >= budget:
            break
        t = load()
        t = normalize(t) if t else ""
        t = head(t, DOC_CAP)
        if not t.strip():
            skipped += 1
            continue
        piece = t + "\n"                          # one blank line between documents
        b = len(piece.encode("utf-8"))
        if size + b > budget:
            piece = head(piece, budget - size)
            if not piece.strip():
                break
            b = len(piece.encode("utf-8"))
        parts.append(piece)
        used.append(doc_id)
        size += b
    text = "".join(parts).rstrip("\n") + "\n"
    return text, used, skipped


def sha256_file(p):
    with open(p, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build(out):
    manifest = {"budgets": {"train": TRAIN_BUDGET, "val": EVAL_BUDGET, "test": EVAL_BUDGET,
                            "calib": CALIB_BUDGET, "doc_cap": DOC_CAP},
                "groff": GROFF,
                "packages": {p: dpkg_version(p) for ps in list(PACKAGES.values()) + [TOOLS] for p in ps},
                "domains": {}}
    for domain, lister in DOMAINS.items():
        docs = lister()
        keyed = sorted((key(domain, d), d, load) for d, load in docs)
        by_split = {s: [x for x in keyed if split_of(x[0]) == s] for s in ("train", "val", "test")}
        ddir = os.path.join(out, domain)
        os.makedirs(ddir, exist_ok=True)
        info = {"documents_total": len(keyed), "files": {}}
        for s, budget in (("train", TRAIN_BUDGET), ("val", EVAL_BUDGET), ("test", EVAL_BUDGET)):
            text, used, skipped = fill(by_split[s], budget)
            with open(os.path.join(ddir, f"{s}.txt"), "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            info[f"{s}_documents_in_split"] = len(by_split[s])
            info[f"{s}_documents_used"] = len(used)
            info[f"{s}_documents_skipped_empty_or_undecodable"] = skipped
            if s == "train":
                calib = head(text, CALIB_BUDGET)
                with open(os.path.join(ddir, "calib.txt"), "w", encoding="utf-8", newline="\n") as f:
                    f.write(calib)
        for s in ("train", "calib", "val", "test"):
            p = os.path.join(ddir, f"{s}.txt")
            info["files"][f"{domain}/{s}.txt"] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
        manifest["domains"][domain] = info
        print(domain, {k: v for k, v in info.items() if k != "files"},
              {k: v["bytes"] for k, v in info["files"].items()}, flush=True)
    with open(os.path.join(out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "models", "lm-domains", "corpus"))
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with OUT/MANIFEST.json")
    a = ap.parse_args()
    if not a.check:
        build(a.out)
        return
    with open(os.path.join(a.out, "MANIFEST.json")) as f:
        want = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        got = build(tmp)
    bad = 0
    for p, v in want["packages"].items():
        if got["packages"][p] != v:
            print(f"VERSION {p}: manifest {v}, installed {got['packages'][p]}")
    for d, info in want["domains"].items():
        for name, fv in info["files"].items():
            gv = got["domains"][d]["files"][name]
            ok = gv["sha256"] == fv["sha256"]
            bad += not ok
            if not ok:
                print("MISMATCH", name, fv, gv)
            elif os.path.exists(os.path.join(a.out, name)) and sha256_file(os.path.join(a.out, name)) != fv["sha256"]:
                print("LOCAL FILE DIFFERS FROM MANIFEST", name)
                bad += 1
    print("corpus check:", "OK" if bad == 0 else f"{bad} mismatches")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
