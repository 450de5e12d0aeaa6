#!/usr/bin/env python3
"""Reference numerics for alexnet-rs, computed by ONNX Runtime.

Builds the three fixture networks of src/nets.rs as ONNX graphs (an independent
implementation of every layer), fills their weights and inputs from a counter-based hash
that the Rust tests reproduce bit for bit (so no weights need committing), runs ONNX
Runtime, and writes tests/fixtures/<net>.safetensors:

  <layer>          the layer's full output, for the small net (batch 2)
  <layer>.sketch   64 signed sums of the layer's output (f64), for the large nets, whose
                   activations are too big to commit; the Rust test forms the same sums
  <layer>.norm     the L2 norm of the layer's output (f64)
  output           the network's full output (batch 2)

Metadata records the seeds, batch and versions. Run: pip install onnx onnxruntime numpy
safetensors; python3 scripts/make_fixtures.py [--seed N]. A new seed gives fresh random
weights and inputs; the Rust tests read the seeds from the fixture.
"""
import argparse
import os
import random

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
SKETCH_SEED = np.uint64(0x5EED5EED)


def splitmix64(x):
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_uniform(seed, stream, n, bound):
    """n values in [-bound, bound): ((2u - 1) * bound) as f32, u = top 24 bits / 2^24."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) + (np.uint64(stream) << np.uint64(40)) + np.arange(n, dtype=np.uint64)
    u = (splitmix64(x) >> np.uint64(40)).astype(np.float64) / 16777216.0
    return ((2.0 * u - 1.0) * bound).astype(np.float32)


def sketch(y):
    """64 sums of y with signs from the bits of a hash of each element's index (f64)."""
    y = y.reshape(-1).astype(np.float64)
    with np.errstate(over="ignore"):
        h = splitmix64(SKETCH_SEED + np.arange(y.size, dtype=np.uint64))
    out = np.empty(64, dtype=np.float64)
    for j in range(64):
        bit = ((h >> np.uint64(j)) & np.uint64(1)).astype(bool)
        out[j] = y[bit].sum() - y[~bit].sum()
    return out


# The networks of src/nets.rs: (name, kind, args), names as the DSL's defaults.
ALEXNET = dict(input=(3, 227, 227), split=2, layers=[
    ("conv1", "conv", dict(out=96, k=11, stride=4, pad=0, groups=1)), ("relu1", "relu", {}),
    ("lrn1", "lrn", dict(size=5, alpha=1e-4, beta=0.75, k=2.0)), ("pool1", "maxpool", dict(k=3, stride=2)),
    ("conv2", "conv", dict(out=256, k=5, stride=1, pad=2, groups=2)), ("relu2", "relu", {}),
    ("lrn2", "lrn", dict(size=5, alpha=1e-4, beta=0.75, k=2.0)), ("pool2", "maxpool", dict(k=3, stride=2)),
    ("conv3", "conv", dict(out=384, k=3, stride=1, pad=1, groups=1)), ("relu3", "relu", {}),
    ("conv4", "conv", dict(out=384, k=3, stride=1, pad=1, groups=2)), ("relu4", "relu", {}),
    ("conv5", "conv", dict(out=256, k=3, stride=1, pad=1, groups=2)), ("relu5", "relu", {}),
    ("pool5", "maxpool", dict(k=3, stride=2)),
    ("drop6", "dropout", {}), ("fc6", "fc", dict(out=4096)), ("relu6", "relu", {}),
    ("drop7", "dropout", {}), ("fc7", "fc", dict(out=4096)), ("relu7", "relu", {}),
    ("fc8", "fc", dict(out=1000)), ("softmax", "softmax", {}),
])
TORCHVISION = dict(input=(3, 224, 224), split=1, layers=[
    ("conv1", "conv", dict(out=64, k=11, stride=4, pad=2, groups=1)), ("relu1", "relu", {}),
    ("pool1", "maxpool", dict(k=3, stride=2)),
    ("conv2", "conv", dict(out=192, k=5, stride=1, pad=2, groups=1)), ("relu2", "relu", {}),
    ("pool2", "maxpool", dict(k=3, stride=2)),
    ("conv3", "conv", dict(out=384, k=3, stride=1, pad=1, groups=1)), ("relu3", "relu", {}),
    ("conv4", "conv", dict(out=256, k=3, stride=1, pad=1, groups=1)), ("relu4", "relu", {}),
    ("conv5", "conv", dict(out=256, k=3, stride=1, pad=1, groups=1)), ("relu5", "relu", {}),
    ("pool5", "maxpool", dict(k=3, stride=2)),
    ("drop6", "dropout", {}), ("fc6", "fc", dict(out=4096)), ("relu6", "relu", {}),
    ("drop7", "dropout", {}), ("fc7", "fc", dict(out=4096)), ("relu7", "relu", {}),
    ("fc8", "fc", dict(out=1000)),
])
SMALL = dict(input=(3, 32, 32), split=2, layers=[
    ("conv1", "conv", dict(out=16, k=5, stride=1, pad=2, groups=1)), ("relu1", "relu", {}),
    ("lrn1", "lrn", dict(size=3, alpha=1e-3, beta=0.75, k=1.0)), ("pool1", "maxpool", dict(k=3, stride=2)),
    ("conv2", "conv", dict(out=32, k=3, stride=1, pad=1, groups=2)), ("relu2", "relu", {}),
    ("pool2", "avgpool", dict(k=2, stride=2)),
    ("conv3", "conv", dict(out=32, k=3, stride=1, pad=1, groups=1)), ("relu3", "relu", {}),
    ("pool3", "maxpool", dict(k=3, stride=2)),
    ("drop4", "dropout", {}), ("fc4", "fc", dict(out=64)), ("relu4", "relu", {}),
    ("fc5", "fc", dict(out=10)), ("softmax", "softmax", {}),
])
NETS = {"alexnet": (ALEXNET, False), "torchvision": (TORCHVISION, False), "small": (SMALL, True)}


def build(net, batch, wseed, all_outputs=True):
    """The ONNX graph and its weights (as the Rust test will regenerate them). With
    all_outputs every layer is a graph output (for per-layer checks); without, only the last
    (so that ONNX Runtime may fuse layers, for timing)."""
    c, h, w = net["input"]
    nodes, inits, outputs, shapes = [], [], [], []
    prev, shape, flat = "input", (c, h, w), False
    param = 0

    def add_param(name, shape_, bound):
        nonlocal param
        data = hash_uniform(wseed, param, int(np.prod(shape_)), bound).reshape(shape_)
        param += 1
        inits.append(numpy_helper.from_array(data, name))

    for name, kind, a in net["layers"]:
        if kind == "conv":
            cin = shape[0]
            fan_in = cin // a["groups"] * a["k"] * a["k"]
            add_param(f"{name}.weight", (a["out"], cin // a["groups"], a["k"], a["k"]), np.sqrt(6.0 / fan_in))
            add_param(f"{name}.bias", (a["out"],), 0.1)
            p = a["pad"]
            nodes.append(helper.make_node("Conv", [prev, f"{name}.weight", f"{name}.bias"], [name],
                                          kernel_shape=[a["k"]] * 2, strides=[a["stride"]] * 2,
                                          pads=[p] * 4, group=a["groups"]))
            ho = (shape[1] + 2 * p - a["k"]) // a["stride"] + 1
            wo = (shape[2] + 2 * p - a["k"]) // a["stride"] + 1
            shape = (a["out"], ho, wo)
        elif kind == "fc":
            n_in = int(np.prod(shape))
            add_param(f"{name}.weight", (a["out"], n_in), np.sqrt(6.0 / n_in))
            add_param(f"{name}.bias", (a["out"],), 0.1)
            src = prev
            if not flat:
                nodes.append(helper.make_node("Flatten", [prev], [f"{name}.flat"], axis=1))
                src, flat = f"{name}.flat", True
            nodes.append(helper.make_node("Gemm", [src, f"{name}.weight", f"{name}.bias"], [name], transB=1))
            shape = (a["out"], 1, 1)
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [prev], [name]))
        elif kind == "dropout":
            nodes.append(helper.make_node("Identity", [prev], [name]))
        elif kind in ("maxpool", "avgpool"):
            op = "MaxPool" if kind == "maxpool" else "AveragePool"
            nodes.append(helper.make_node(op, [prev], [name], kernel_shape=[a["k"]] * 2, strides=[a["stride"]] * 2))
            shape = (shape[0], (shape[1] - a["k"]) // a["stride"] + 1, (shape[2] - a["k"]) // a["stride"] + 1)
        elif kind == "lrn":
            attrs = dict(size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["k"])
            towers = net["split"]
            if towers == 1:
                nodes.append(helper.make_node("LRN", [prev], [name], **attrs))
            else:
                # The paper's towers normalise their own channels only.
                parts = [f"{name}.t{i}" for i in range(towers)]
                nodes.append(helper.make_node("Split", [prev], parts, axis=1, num_outputs=towers))
                for part in parts:
                    nodes.append(helper.make_node("LRN", [part], [part + ".lrn"], **attrs))
                nodes.append(helper.make_node("Concat", [p + ".lrn" for p in parts], [name], axis=1))
        elif kind == "softmax":
            nodes.append(helper.make_node("Softmax", [prev], [name], axis=1))
        else:
            raise ValueError(kind)
        outputs.append(name)
        shapes.append([batch, shape[0]] if flat else [batch, *shape])
        prev = name

    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, c, h, w])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in zip(outputs, shapes)][0 if all_outputs else -1:],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model, outputs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None, help="base seed (default: random)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    os.makedirs(args.out, exist_ok=True)
    for i, (key, (net, full)) in enumerate(NETS.items()):
        wseed, iseed = seed * 16 + 2 * i, seed * 16 + 2 * i + 1
        model, outputs = build(net, args.batch, wseed)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        c, h, w = net["input"]
        x = hash_uniform(iseed, 0, args.batch * c * h * w, 1.0).reshape(args.batch, c, h, w)
        results = dict(zip(outputs, sess.run(outputs, {"input": x})))
        tensors = {"output": np.ascontiguousarray(results[outputs[-1]].reshape(args.batch, -1))}
        for name, y in results.items():
            if full:
                tensors[name] = np.ascontiguousarray(y.reshape(args.batch, -1))
            else:
                tensors[f"{name}.sketch"] = sketch(y)
                tensors[f"{name}.norm"] = np.array([np.linalg.norm(y.reshape(-1).astype(np.float64))])
        meta = {
            "net": key, "weight_seed": str(wseed), "input_seed": str(iseed), "batch": str(args.batch),
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "layers": ",".join(outputs),
        }
        path = os.path.join(args.out, f"{key}.safetensors")
        save_file(tensors, path, metadata=meta)
        print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path) / 1e3:.0f} kB, seeds {wseed}/{iseed}")


if __name__ == "__main__":
    main()
