#!/usr/bin/env python3
"""Whole-task peer benchmark: Taskpath (C ABI via ctypes) vs onnxruntime.

usage: onnx_peer.py LIBTASKPATH.so ROUNDS RUNS PKG_DIR ...

Each PKG_DIR holds `model.tpk` and one directory per task with
`<TASK>.whole.onnx` and the dumped test samples
`reference/<TASK>.whole/<k>/in.<input>.npy` (`export-onnx --whole
--dump-reference`). Both engines run in this one process (pin it with
`taskset -c N`) on the same inputs, cycling through the dumped samples:
Taskpath through `tp_session_run`, onnxruntime through
`InferenceSession.run` with one intra-op and one inter-op thread,
sequential execution and every graph optimization. Each round runs RUNS
calls of one engine then RUNS of the other (the order alternates by round);
every call is timed alone (perf_counter_ns). Prints a markdown table: p50
and p90 per call in microseconds and the taskpath/ort p50 ratio, and the
per-call floor of each binding (a ctypes call of `tp_abi_version`; an
onnxruntime session of one Identity node).
"""
import ctypes
import json
import pathlib
import platform
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

TP_ARENA_ALIGN = 16


class TaskpathLib:
    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        P = ctypes.c_void_p
        lib.tp_abi_version.restype = ctypes.c_uint32
        lib.tp_abi_version.argtypes = []
        lib.tp_last_error.restype = ctypes.c_char_p
        lib.tp_model_open_file.restype = ctypes.c_uint32
        lib.tp_model_open_file.argtypes = [ctypes.c_char_p, P, ctypes.POINTER(P)]
        lib.tp_model_find_task.restype = ctypes.c_uint32
        lib.tp_model_find_task.argtypes = [P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32)]
        lib.tp_session_arena_size.restype = ctypes.c_uint32
        lib.tp_session_arena_size.argtypes = [P, ctypes.c_uint32, ctypes.POINTER(ctypes.c_size_t)]
        lib.tp_session_create.restype = ctypes.c_uint32
        lib.tp_session_create.argtypes = [P, ctypes.c_uint32, P, ctypes.c_size_t, P, ctypes.POINTER(P)]
        lib.tp_session_run.restype = ctypes.c_uint32
        lib.tp_session_run.argtypes = [P, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, P, ctypes.c_size_t]
        lib.tp_session_destroy.restype = ctypes.c_uint32
        lib.tp_session_destroy.argtypes = [ctypes.POINTER(P)]
        lib.tp_model_close.restype = ctypes.c_uint32
        lib.tp_model_close.argtypes = [ctypes.POINTER(P)]
        self.lib = lib

    def check(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: status {status}: {self.lib.tp_last_error().decode()}")


class TaskpathSession:
    """One task's session in caller-provided (numpy) memory."""

    def __init__(self, tp, model, task):
        self.tp = tp
        lib = tp.lib
        idx = ctypes.c_uint32()
        tp.check(lib.tp_model_find_task(model, task.encode(), ctypes.byref(idx)), "find task")
        size = ctypes.c_size_t()
        tp.check(lib.tp_session_arena_size(model, idx, ctypes.byref(size)), "arena size")
        self.mem = np.zeros(size.value + TP_ARENA_ALIGN, dtype=np.uint8)
        addr = self.mem.ctypes.data
        addr += (-addr) % TP_ARENA_ALIGN
        self.session = ctypes.c_void_p()
        tp.check(lib.tp_session_create(model, idx, addr, size.value, None, ctypes.byref(self.session)),
                 "session create")
        self.run_fn = lib.tp_session_run

    def prepare(self, inputs, n_out):
        """The argument tuple of one call: inputs (kept alive), outputs."""
        arrs = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        ptrs = (ctypes.c_void_p * len(arrs))(*[a.ctypes.data for a in arrs])
        out = np.zeros(n_out, dtype=np.float32)
        return (arrs, ptrs, out, (self.session, ptrs, len(arrs), out.ctypes.data, n_out))

    def close(self):
        self.tp.lib.tp_session_destroy(ctypes.byref(self.session))


def ort_options():
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.log_severity_level = 3
    return o


def pct(v, q):
    return float(np.percentile(np.asarray(v, dtype=np.float64), q)) / 1e3


def floors(tp, runs):
    """Per-call cost of each binding with (almost) no work behind it."""
    f = tp.lib.tp_abi_version
    t_c = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        f()
        t_c.append(time.perf_counter_ns() - t0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    s = ort.InferenceSession(m.SerializeToString(), ort_options(), providers=["CPUExecutionProvider"])
    feeds = {"x": np.zeros((1, 2), np.float32)}
    t_o = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        s.run(["y"], feeds)
        t_o.append(time.perf_counter_ns() - t0)
    return pct(t_c, 50), pct(t_o, 50)


def bench_task(tp, model, pkg_name, task_dir, rounds, runs):
    task = task_dir.name
    gpath = task_dir / f"{task}.whole.onnx"
    graph = onnx.load(str(gpath))
    in_names = [i.name for i in graph.graph.input]
    refs = sorted((task_dir / "reference" / f"{task}.whole").glob("*"), key=lambda p: int(p.name))
    samples = [[np.load(r / f"in.{n}.npy") for n in in_names] for r in refs]
    n_out = int(np.load(refs[0] / "out.logits.npy").size)
    sess = ort.InferenceSession(str(gpath), ort_options(), providers=["CPUExecutionProvider"])
    feeds = [dict(zip(in_names, s)) for s in samples]
    tps = TaskpathSession(tp, model, task)
    calls = [tps.prepare(s, n_out) for s in samples]
    run = tps.run_fn
    # Same inputs, same outputs (within the --whole bound), before timing.
    worst = 0.0
    for c, f in zip(calls, feeds):
        tp.check(run(*c[3]), "run")
        (o,) = sess.run(["logits"], f)
        want = c[2]
        worst = max(worst, float(np.max(np.abs(o.ravel() - want))) / max(float(np.max(np.abs(want))), 1e-30))
    t_tp, t_ort = [], []
    ns = len(samples)
    for _ in range(3):  # warm-up
        for k in range(ns):
            run(*calls[k][3])
            sess.run(["logits"], feeds[k])
    for r in range(rounds):
        order = ("tp", "ort") if r % 2 == 0 else ("ort", "tp")
        for who in order:
            if who == "tp":
                for i in range(runs):
                    a = calls[i % ns][3]
                    t0 = time.perf_counter_ns()
                    st = run(*a)
                    t_tp.append(time.perf_counter_ns() - t0)
                    if st != 0:
                        tp.check(st, "run")
            else:
                for i in range(runs):
                    f = feeds[i % ns]
                    t0 = time.perf_counter_ns()
                    sess.run(["logits"], f)
                    t_ort.append(time.perf_counter_ns() - t0)
    tps.close()
    return {
        "package": pkg_name,
        "task": task,
        "samples": ns,
        "calls": len(t_tp),
        "tp_p50": pct(t_tp, 50),
        "tp_p90": pct(t_tp, 90),
        "ort_p50": pct(t_ort, 50),
        "ort_p90": pct(t_ort, 90),
        "max_rel_diff": worst,
    }


def main(libpath, rounds, runs, pkg_dirs):
    tp = TaskpathLib(libpath)
    rows = []
    for d in map(pathlib.Path, pkg_dirs):
        model = ctypes.c_void_p()
        tp.check(tp.lib.tp_model_open_file(str(d / "model.tpk").encode(), None, ctypes.byref(model)), "open")
        for task_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            row = bench_task(tp, model, d.name, task_dir, rounds, runs)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        tp.check(tp.lib.tp_model_close(ctypes.byref(model)), "close")
    c_floor, ort_floor = floors(tp, 20000)
    print(f"onnxruntime {ort.__version__}, python {platform.python_version()}; "
          f"{rounds} rounds x {runs} calls per engine per task, interleaved")
    print(f"per-call floor (p50): ctypes call of tp_abi_version {c_floor:.2f} us; "
          f"onnxruntime InferenceSession.run of one Identity node {ort_floor:.2f} us")
    print()
    print("| package | task | taskpath p50 us | taskpath p90 us | ort p50 us | ort p90 us | taskpath/ort p50 | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['package']} | {r['task']} | {r['tp_p50']:.1f} | {r['tp_p90']:.1f} | {r['ort_p50']:.1f} | "
              f"{r['ort_p90']:.1f} | {r['tp_p50'] / r['ort_p50']:.2f} | {r['max_rel_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
