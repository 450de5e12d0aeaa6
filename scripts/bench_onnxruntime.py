#!/usr/bin/env python3
"""alexnet-rs's CPU forward pass beside ONNX Runtime's, in one run: the paper's AlexNet
(the graph of scripts/make_fixtures.py, grouped convs and per-tower LRN, 227x227) at the
given batch sizes and thread count, median of N runs after warm-up, in interleaved rounds
(ONNX Runtime, then each alexnet-rs variant, per batch size and round; the variants'
order rotates from round to round, since the one run first after ONNX Runtime measured
slower at batch 1), and the ratio of the two in each round. The machine this project is
measured on is shared and its speed drifts from minute to minute, so compare within a
round and read the median ratio.

  cargo build --release --example alexnet
  python3 scripts/bench_onnxruntime.py --threads 2 --batch 1 16 --runs 10 --rounds 3

`--alexnet-rs none` times ONNX Runtime alone. Environment variables such as
ALEXNET_CPU_GEMM=gemm or ALEXNET_CPU_CONV=im2col pass through to alexnet-rs.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

from make_fixtures import ALEXNET, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ort_session(batch, threads):
    model, outputs = build(ALEXNET, batch, 1, all_outputs=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, 227, 227)).astype(np.float32)
    last = [outputs[-1]]
    for _ in range(3):
        sess.run(last, {"input": x})
    return lambda: sess.run(last, {"input": x})


def time_ort(run, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_alexnet_rs(binary, batch, runs, threads, variant):
    """`variant`: a precision (`f32`, `bf16`), optionally with a convolution algorithm for
    ALEXNET_CPU_CONV after a slash (`f32/winograd`)."""
    precision, _, conv = variant.partition("/")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    if conv:
        env["ALEXNET_CPU_CONV"] = conv
    out = subprocess.run(
        [binary, "bench", "--device", "cpu", "--precision", precision, "--batch", str(batch),
         "--runs", str(runs)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    m = re.search(r"batch\s+(\d+):\s+([\d.]+) ms per batch", out)
    if not m:
        sys.exit(f"could not read the time from alexnet-rs's output:\n{out}")
    stages = re.search(r"stages \(ms\): (.*)", out)
    return float(m.group(2)) / 1e3, stages.group(1) if stages else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--alexnet-rs", default=os.path.join(ROOT, "target/release/examples/alexnet"),
                    help="the alexnet example binary (cargo build --release --example alexnet), or none")
    ap.add_argument("--stages", action="store_true", help="print alexnet-rs's per-stage times too")
    ap.add_argument("--precision", nargs="+", default=["f32"], choices=[f"{p}{c}" for p in ("f32", "bf16") for c in ("", "/auto", "/direct", "/im2col", "/packed", "/winograd")],
                    help="alexnet-rs's precisions to time, each beside the same ONNX Runtime f32 run; "
                         "PRECISION/ALGORITHM also sets ALEXNET_CPU_CONV (f32/direct, f32/winograd)")
    args = ap.parse_args()
    rs = None if args.alexnet_rs == "none" else args.alexnet_rs
    if rs and not os.access(rs, os.X_OK):
        sys.exit(f"{rs} not found: build it with `cargo build --release --example alexnet`")
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, ORT_ENABLE_ALL; "
          f"median of {args.runs} runs per entry")
    sessions = {b: ort_session(b, args.threads) for b in args.batch}
    ratios = {(b, p): [] for b in args.batch for p in args.precision}
    for r in range(1, args.rounds + 1):
        for b in args.batch:
            t_ort = time_ort(sessions[b], args.runs)
            line = f"round {r}, batch {b:>3}: onnxruntime {t_ort * 1e3:8.2f} ms ({b / t_ort:6.1f} img/s)"
            # The variants in an order rotated each round: the one that runs first after
            # ONNX Runtime, and the one furthest from its timing, change from round to round.
            k = (r - 1) % len(args.precision)
            order = args.precision[k:] + args.precision[:k]
            for p in order if rs else []:
                t_rs, stages = time_alexnet_rs(rs, b, args.runs, args.threads, p)
                ratios[(b, p)].append(t_ort / t_rs)
                line += (f"\n    alexnet-rs {p:>4} {t_rs * 1e3:8.2f} ms ({b / t_rs:6.1f} img/s)"
                         f"  speed ratio {t_ort / t_rs:5.2f}x")
                if args.stages:
                    line += f"\n      stages (ms): {stages}"
            print(line, flush=True)
    if rs:
        for (b, p), rs_ratios in ratios.items():
            print(f"batch {b:>3}, {p}: alexnet-rs / onnxruntime f32 speed, median over rounds: "
                  f"{statistics.median(rs_ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in rs_ratios)})")


if __name__ == "__main__":
    main()
