#!/usr/bin/env python3
"""Reference gradients for alexnet-rs's training step, computed by NumPy in float64.

An implementation of the small net of src/nets.rs (conv with groups and padding, ReLU, LRN
within each of the two towers, overlapping max pooling, average pooling, dropout, fc, the
softmax cross-entropy) forward and backward, written from the definitions independently of
the Rust code. Weights, inputs and labels come from the counter-based hash of
scripts/make_fixtures.py, which the Rust test reproduces bit for bit; the dropout mask
from Philox4x32-10 (Salmon et al. 2011) on (element, layer, step) keyed by the seed, as
the runtime draws it. Writes tests/fixtures/small_train.safetensors: the mean loss and
the gradient of every parameter for one batch, before the SGD update.

Run: pip install onnx onnxruntime numpy safetensors (make_fixtures.py, whose hash this
shares, imports them); python3 scripts/make_training_fixture.py [--seed N].
"""
import argparse
import os
import random

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from safetensors.numpy import save_file

from make_fixtures import SMALL, hash_uniform, splitmix64

U32 = np.uint64(0xFFFFFFFF)


def philox_first_word(counter0, c1, c2, c3, key0, key1):
    """Word 0 of Philox4x32-10 for an array of first counter words (uint64 holding u32)."""
    c0 = counter0.astype(np.uint64)
    c1 = np.full_like(c0, c1)
    c2 = np.full_like(c0, c2)
    c3 = np.full_like(c0, c3)
    k0, k1 = np.uint64(key0), np.uint64(key1)
    for r in range(10):
        if r > 0:
            k0 = (k0 + np.uint64(0x9E3779B9)) & U32
            k1 = (k1 + np.uint64(0xBB67AE85)) & U32
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & U32
        hi1, lo1 = p1 >> np.uint64(32), p1 & U32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0


def conv_fwd(x, w, b, s, p, g):
    n, c, _, _ = x.shape
    o, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    og = o // g
    ys = [np.einsum("ncpqij,ocij->nopq", win[:, i * cg:(i + 1) * cg], w[i * og:(i + 1) * og]) for i in range(g)]
    return np.concatenate(ys, axis=1) + b[None, :, None, None], (xp, win)


def conv_bwd(x, w, dy, s, p, g, cache):
    xp, win = cache
    o, cg, k, _ = w.shape
    og = o // g
    dw = np.concatenate([np.einsum("nopq,ncpqij->ocij", dy[:, i * og:(i + 1) * og], win[:, i * cg:(i + 1) * cg])
                         for i in range(g)], axis=0)
    db = dy.sum(axis=(0, 2, 3))
    dxp = np.zeros_like(xp)
    pp, qq = dy.shape[2], dy.shape[3]
    for i in range(g):
        t = np.einsum("nopq,ocij->ncpqij", dy[:, i * og:(i + 1) * og], w[i * og:(i + 1) * og])
        for a in range(k):
            for bb in range(k):
                dxp[:, i * cg:(i + 1) * cg, a:a + s * pp:s, bb:bb + s * qq:s] += t[..., a, bb]
    h, wd = x.shape[2], x.shape[3]
    return dxp[:, :, p:p + h, p:p + wd], dw, db


def lrn_sums(v, size, towers):
    """Per channel c, the sum of v over the `size` channels centred on c within c's tower."""
    c = v.shape[1]
    cg, half = c // towers, size // 2
    out = np.zeros_like(v)
    for ch in range(c):
        lo = ch // cg * cg
        hi = lo + cg - 1
        out[:, ch] = v[:, max(lo, ch - half):min(hi, ch + half) + 1].sum(axis=1)
    return out


def lrn_fwd(x, a, towers):
    s = a["k"] + a["alpha"] / a["size"] * lrn_sums(x * x, a["size"], towers)
    return x * s ** -a["beta"], s


def lrn_bwd(x, dy, s, a, towers):
    beta, coef = a["beta"], a["alpha"] / a["size"]
    # dy_i/dx_j = [i == j] s_i^-b - 2 coef b x_i x_j s_i^(-b-1) for j in N(i); N is symmetric.
    return dy * s ** -beta - 2 * coef * beta * x * lrn_sums(dy * x * s ** (-beta - 1), a["size"], towers)


def pool_fwd(x, k, s, kind):
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    flat = win.reshape(*win.shape[:4], k * k)
    if kind == "maxpool":
        return flat.max(axis=-1), flat.argmax(axis=-1)  # argmax: the first largest, row-major
    return flat.mean(axis=-1), None


def pool_bwd(x, dy, k, s, kind, arg):
    dx = np.zeros_like(x)
    n, c, pp, qq = dy.shape
    for a in range(k):
        for b in range(k):
            if kind == "maxpool":
                contrib = dy * (arg == a * k + b)
            else:
                contrib = dy / (k * k)
            dx[:, :, a:a + s * pp:s, b:b + s * qq:s] += contrib
    return dx


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None, help="base seed (default: random)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    wseed, iseed, lseed, dseed = seed * 16 + 8, seed * 16 + 9, seed * 16 + 10, seed * 16 + 11
    net, towers, batch = SMALL, SMALL["split"], args.batch
    c, h, w = net["input"]
    x = hash_uniform(iseed, 0, batch * c * h * w, 1.0).reshape(batch, c, h, w).astype(np.float64)
    with np.errstate(over="ignore"):
        labels = (splitmix64(np.uint64(lseed) + np.arange(batch, dtype=np.uint64)) % np.uint64(10)).astype(np.int64)

    # Parameters, in the order (and with the bounds) of make_fixtures.build.
    params, shapes, index = {}, [], 0
    shape = (c, h, w)
    for name, kind, a in net["layers"]:
        if kind == "conv":
            fan_in = shape[0] // a["groups"] * a["k"] ** 2
            wshape = (a["out"], shape[0] // a["groups"], a["k"], a["k"])
            params[f"{name}.weight"] = hash_uniform(wseed, index, int(np.prod(wshape)), np.sqrt(6.0 / fan_in)).reshape(wshape).astype(np.float64)
            params[f"{name}.bias"] = hash_uniform(wseed, index + 1, a["out"], 0.1).astype(np.float64)
            index += 2
            ho = (shape[1] + 2 * a["pad"] - a["k"]) // a["stride"] + 1
            shape = (a["out"], ho, ho)
        elif kind == "fc":
            n_in = int(np.prod(shape))
            params[f"{name}.weight"] = hash_uniform(wseed, index, a["out"] * n_in, np.sqrt(6.0 / n_in)).reshape(a["out"], n_in).astype(np.float64)
            params[f"{name}.bias"] = hash_uniform(wseed, index + 1, a["out"], 0.1).astype(np.float64)
            index += 2
            shape = (a["out"], 1, 1)
        elif kind in ("maxpool", "avgpool"):
            shape = (shape[0], (shape[1] - a["k"]) // a["stride"] + 1, (shape[2] - a["k"]) // a["stride"] + 1)

    # Forward, keeping what backward needs.
    tape, v = [], x
    for li, (name, kind, a) in enumerate(net["layers"]):
        if kind == "conv":
            y, cache = conv_fwd(v, params[f"{name}.weight"], params[f"{name}.bias"], a["stride"], a["pad"], a["groups"])
            tape.append((name, kind, a, v, cache))
        elif kind == "relu":
            y = np.maximum(v, 0)
            tape.append((name, kind, a, v, None))
        elif kind == "lrn":
            y, s = lrn_fwd(v, a, towers)
            tape.append((name, kind, a, v, s))
        elif kind in ("maxpool", "avgpool"):
            y, arg = pool_fwd(v, a["k"], a["stride"], kind)
            tape.append((name, kind, a, v, arg))
        elif kind == "dropout":
            idx = np.arange(v.size, dtype=np.uint64)
            draw = philox_first_word(idx, li, 0, 0, dseed & 0xFFFFFFFF, dseed >> 32)
            keep = (draw >= np.uint64(1 << 31)).reshape(v.shape)  # p = 0.5
            y = np.where(keep, v * 2.0, 0.0)
            tape.append((name, kind, a, v, keep))
        elif kind == "fc":
            flat = v.reshape(batch, -1)
            y = (flat @ params[f"{name}.weight"].T + params[f"{name}.bias"]).reshape(batch, -1, 1, 1)
            tape.append((name, kind, a, v, None))
        elif kind == "softmax":
            break
        v = y
    z = v.reshape(batch, -1)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(batch), labels].mean()
    g = np.exp(logp)
    g[np.arange(batch), labels] -= 1.0
    g = (g / batch).reshape(v.shape)

    # Backward.
    grads = {}
    for name, kind, a, xin, extra in reversed(tape):
        if kind == "conv":
            g, grads[f"{name}.weight"], grads[f"{name}.bias"] = conv_bwd(
                xin, params[f"{name}.weight"], g, a["stride"], a["pad"], a["groups"], extra)
        elif kind == "relu":
            g = g * (xin > 0)
        elif kind == "lrn":
            g = lrn_bwd(xin, g, extra, a, towers)
        elif kind in ("maxpool", "avgpool"):
            g = pool_bwd(xin, g, a["k"], a["stride"], kind, extra)
        elif kind == "dropout":
            g = np.where(extra, g * 2.0, 0.0)
        elif kind == "fc":
            flat = xin.reshape(batch, -1)
            g2 = g.reshape(batch, -1)
            grads[f"{name}.weight"] = g2.T @ flat
            grads[f"{name}.bias"] = g2.sum(axis=0)
            g = (g2 @ params[f"{name}.weight"]).reshape(xin.shape)

    tensors = {k: np.ascontiguousarray(v.astype(np.float64)) for k, v in grads.items()}
    tensors["loss"] = np.array([loss])
    meta = {
        "net": "small", "weight_seed": str(wseed), "input_seed": str(iseed), "label_seed": str(lseed),
        "dropout_seed": str(dseed), "batch": str(batch), "numpy": np.__version__,
    }
    path = os.path.join(args.out, "small_train.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"{path}: loss {loss:.6f}, {len(grads)} gradients, {os.path.getsize(path) / 1e3:.0f} kB, seed {seed}")


if __name__ == "__main__":
    main()
