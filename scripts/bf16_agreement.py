#!/usr/bin/env python3
"""How often bf16 products change AlexNet's top-1 class, measured by an implementation
that shares no code with alexnet-rs: ONNX Runtime on the paper's AlexNet (the graph of
scripts/make_fixtures.py: grouped convs, per-tower LRN, He-uniform weights from its hash),
once in f32 and once with what `--precision bf16` means on the CPU: every convolution's
and fully connected layer's weights and input rounded to bf16 (to nearest, ties to even:
ONNX's Cast to BFLOAT16 and back), the products summed in f32, the bias and every other
layer in f32.

It prints, per kind of input, the worst relative L2 distance of the logits, the share of
images whose top-1 class is the same, and the f32 logits' top-1 margins (the gap between
the two largest logits over the logits' spread across classes), which decide how many
classes a rounding of that size can swap. tests/cpu_bf16.rs measures alexnet-rs itself
on the same question (issue 16 asks for 99% of 256 inputs).

With --variants it asks whether less rounding would reach 99%: on the smooth shapes, the
same per seed with bf16 everywhere, with the weights alone rounded, with the fc layers'
inputs kept in f32, and with the fc layers wholly in f32.

  pip install onnx onnxruntime numpy
  python3 scripts/bf16_agreement.py [--images 256] [--seeds 1 2] [--variants]
"""
import argparse
import os
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ALEXNET, build  # noqa: E402


def bf16_round(a):
    """f32 values rounded to bf16 (to nearest, ties to even), as f32."""
    b = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


LEARNED = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]

# --variants: which conv and fc layers round their input and which their weights, to see
# whether keeping some of the rounding out would reach 99% (issue 16's goal).
VARIANTS = {
    "bf16 (inputs and weights)": (LEARNED, LEARNED),
    "weights only": ([], LEARNED),
    "fc inputs in f32": (LEARNED[:5], LEARNED),
    "fc layers in f32": (LEARNED[:5], LEARNED[:5]),
}


def bf16_graph(model, inputs=LEARNED, weights=LEARNED):
    """The f32 graph with the weights of the conv and fc layers named in `weights` rounded
    to bf16, and a round trip through bf16 on the input of those named in `inputs`."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for node in g.node:
        if node.op_type in ("Conv", "Gemm"):
            name = node.output[0]
            if name in inputs:
                src = node.input[0]
                nodes.append(helper.make_node("Cast", [src], [src + ".bf16"], to=TensorProto.BFLOAT16))
                nodes.append(helper.make_node("Cast", [src + ".bf16"], [src + ".rounded"], to=TensorProto.FLOAT))
                node.input[0] = src + ".rounded"
            if name in weights:
                w = inits[node.input[1]]
                w.CopyFrom(numpy_helper.from_array(bf16_round(numpy_helper.to_array(w)), w.name))
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def session(model):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def images(kind, n, rng):
    """n images of 3x227x227 in pixel range with the mean taken off (-127.5..127.5)."""
    if kind == "uniform noise":
        return rng.uniform(-127.5, 127.5, (n, 3, 227, 227)).astype(np.float32)
    # Smooth images: random 8x8 colour fields enlarged (bilinear), a few bright and dark
    # discs, and a little pixel noise.
    out = np.empty((n, 3, 227, 227), np.float32)
    t = np.linspace(0, 7, 227)
    i0 = np.minimum(t.astype(int), 6)
    f = (t - i0)[None, :]
    yy, xx = np.mgrid[0:227, 0:227]
    for k in range(n):
        low = rng.uniform(-1, 1, (3, 8, 8))
        rows = low[:, i0, :] * (1 - f.T)[None] + low[:, i0 + 1, :] * f.T[None]
        img = rows[:, :, i0] * (1 - f)[None] + rows[:, :, i0 + 1] * f[None]
        for _ in range(3):
            cy, cx, r = rng.uniform(30, 197), rng.uniform(30, 197), rng.uniform(10, 50)
            img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(-1, 1, (3, 1))
        img += rng.normal(0, 0.05, img.shape)
        out[k] = np.clip(img, -1, 1) * 127.5
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="weight seeds")
    ap.add_argument("--variants", action="store_true",
                    help="smooth shapes only, under each rounding of VARIANTS: the mean logits error and "
                         "the agreement per seed, then each variant's mean agreement")
    args = ap.parse_args()
    if args.variants:
        return variants(args)
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}; {args.images} images per row")
    print("weights seed | input | worst logits rel. L2 | top-1 equal | f32 top-1 margins: median, 5th percentile")
    for seed in args.seeds:
        model, _ = build(ALEXNET, args.batch, seed, all_outputs=True)
        f32 = session(model)
        bf16 = session(bf16_graph(model))
        for kind in ("smooth shapes", "uniform noise"):
            rng = np.random.default_rng(seed * 100 + len(kind))
            same, worst, margins = 0, 0.0, []
            for start in range(0, args.images, args.batch):
                x = images(kind, args.batch, rng)
                a = f32.run(["fc8"], {"input": x})[0].astype(np.float64)
                b = bf16.run(["fc8"], {"input": x})[0].astype(np.float64)
                take = min(args.batch, args.images - start)
                for ra, rb in zip(a[:take], b[:take]):
                    worst = max(worst, np.linalg.norm(rb - ra) / np.linalg.norm(ra))
                    same += int(np.argmax(ra) == np.argmax(rb))
                    top2 = np.sort(ra)[-2:]
                    margins.append((top2[1] - top2[0]) / ra.std())
            m = np.array(margins)
            print(f"{seed} | {kind} | {worst:.2e} | {same}/{args.images} ({100 * same / args.images:.1f}%) | "
                  f"{np.median(m):.3f}, {np.percentile(m, 5):.4f}")


def variants(args):
    print(f"onnxruntime {ort.__version__}; smooth shapes, {args.images} images per seed")
    print("variant | weights seed | mean logits rel. L2 | top-1 equal")
    agreed = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        import copy
        model, _ = build(ALEXNET, args.batch, seed, all_outputs=True)
        f32 = session(model)
        rng = np.random.default_rng(seed * 100 + len("smooth shapes"))
        xs = [images("smooth shapes", args.batch, rng) for _ in range(0, args.images, args.batch)]
        ref = [f32.run(["fc8"], {"input": x})[0].astype(np.float64) for x in xs]
        for name, (inputs, weights) in VARIANTS.items():
            s = session(bf16_graph(copy.deepcopy(model), inputs, weights))
            same, errs = 0, []
            for x, a in zip(xs, ref):
                b = s.run(["fc8"], {"input": x})[0].astype(np.float64)
                for ra, rb in zip(a, b):
                    errs.append(np.linalg.norm(rb - ra) / np.linalg.norm(ra))
                    same += int(np.argmax(ra) == np.argmax(rb))
            n = len(errs)
            agreed[name].append(same / n)
            print(f"{name} | {seed} | {np.mean(errs):.2e} | {same}/{n} ({100 * same / n:.1f}%)", flush=True)
    for name, a in agreed.items():
        at = sum(x >= 0.99 for x in a)
        print(f"{name}: mean agreement {100 * np.mean(a):.2f}%, {at} of {len(a)} seeds at 99% or more")


if __name__ == "__main__":
    main()
