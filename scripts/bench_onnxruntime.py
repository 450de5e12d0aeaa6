#!/usr/bin/env python3
"""ONNX Runtime reference timing for docs/benchmarks.md: the paper's AlexNet (the graph of
scripts/make_fixtures.py, grouped convs and per-tower LRN, 227x227) forward on CPU, at the
given batch sizes and thread count, median of N runs after warm-up.

  python3 scripts/bench_onnxruntime.py --threads 2 --batch 1 16
"""
import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

from make_fixtures import ALEXNET, build


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, ORT_ENABLE_ALL")
    for batch in args.batch:
        model, outputs = build(ALEXNET, batch, 1, all_outputs=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, 227, 227)).astype(np.float32)
        last = [outputs[-1]]
        for _ in range(3):
            sess.run(last, {"input": x})
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            sess.run(last, {"input": x})
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"batch {batch:>3}: {med * 1e3:8.2f} ms  {batch / med:8.1f} images/s (median of {args.runs})")


if __name__ == "__main__":
    main()
