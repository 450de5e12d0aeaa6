#!/usr/bin/env python3
"""The matrices of the CPU backend's Winograd convolutions (alexnet-runtime/src/cpu/winograd.rs),
derived exactly (sympy's rationals) by the Toom-Cook construction of Lavin & Gray's "Fast
Algorithms for Convolutional Neural Networks" (2015): for F(m, r) with alpha = m + r - 1
and the points p_0 .. p_{alpha-2} plus infinity,

  linear convolution   s = C [(G g) * (A h)],  A[j][i] = p_j^i,  G[j][k] = p_j^k,
                       C = the inverse of the alpha x alpha Vandermonde matrix;
  correlation (CNNs)   Y = A^T [(G g) * (C^T d)]   (the transposed algorithm),

so B^T = C^T. Each row of B^T is scaled to small integers and the inverse scale moved
into the same row of G, whose transform runs once per weight change in f64. Prints the
Rust constants, and each algorithm's f32 error on random data as a check:

  python3 scripts/winograd_matrices.py
"""
import numpy as np
import sympy as sp

HALF = sp.Rational(1, 2)
ALGORITHMS = [
    ("F4x4K3", 4, 3, [0, 1, -1, 2, -2]),
    ("F4x4K5", 4, 5, [0, 1, -1, 2, -2, HALF, -HALF]),
]


def matrices(m, r, points):
    a = m + r - 1
    assert len(points) == a - 1
    vander = sp.zeros(a, a)
    for j, p in enumerate(points):
        for i in range(a):
            vander[j, i] = sp.Rational(p) ** i
    vander[a - 1, a - 1] = 1
    c = vander.inv()
    at = sp.zeros(m, a)
    g = sp.zeros(a, r)
    for j, p in enumerate(points):
        for i in range(m):
            at[i, j] = sp.Rational(p) ** i
        for k in range(r):
            g[j, k] = sp.Rational(p) ** k
    at[m - 1, a - 1] = 1
    g[a - 1, r - 1] = 1
    bt = c.T
    for j in range(a):
        row = bt[j, :]
        dens = [sp.fraction(x)[1] for x in row]
        nums = [abs(sp.fraction(x)[0]) for x in row if x != 0]
        s = sp.Rational(sp.ilcm(*dens), sp.igcd(*nums))
        bt[j, :] = row * s
        g[j, :] = g[j, :] / s
    return at, g, bt


def f32_error(at, g, bt, m, r, channels=48, trials=20):
    """Relative L2 error of one output tile summed over `channels`, in f32, against f64."""
    a = m + r - 1
    at, g, bt = (np.array(x.tolist(), dtype=np.float64) for x in (at, g, bt))
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(trials):
        d = rng.uniform(-1, 1, (channels, a, a)).astype(np.float32)
        f = rng.uniform(-1, 1, (channels, r, r)).astype(np.float32)
        want = np.zeros((m, m))
        for i in range(m):
            for j in range(m):
                want[i, j] = (d[:, i:i + r, j:j + r].astype(np.float64) * f).sum()
        u = np.einsum("ak,ckl,bl->cab", g, f.astype(np.float64), g).astype(np.float32)
        b32 = bt.astype(np.float32)
        v = np.einsum("ai,cij,bj->cab", b32, d, b32).astype(np.float32)
        mm = (u * v).sum(axis=0, dtype=np.float32)
        a32 = at.astype(np.float32)
        y = a32 @ mm @ a32.T
        errs.append(np.linalg.norm(y - want) / np.linalg.norm(want))
    return float(np.mean(errs))


def rust(x, f64=False):
    x = sp.Rational(x)
    if x.q == 1:
        return f"{x.p}.0"
    if f64:
        return f"{x.p}.0 / {x.q}.0"
    return f"{float(x)!r}"


def expression(row, var):
    """`row` (constants) dotted with `var0[j]`, `var1[j]`, ..., zeros left out."""
    terms = []
    for k, c in enumerate(row):
        c = sp.Rational(c)
        if c == 0:
            continue
        mag = abs(c)
        term = f"{var}{k}[j]" if mag == 1 else f"{rust(mag)} * {var}{k}[j]"
        sign = "-" if c < 0 else "+"
        terms.append((sign, term))
    first_sign, first = terms[0]
    out = ("-" if first_sign == "-" else "") + first
    for sign, term in terms[1:]:
        out += f" {sign} {term}"
    return out


def function(name, mat, var):
    """A Rust function applying `mat` (rows x cols) to `cols` vectors of lanes."""
    rows, cols = mat.shape
    lines = [f"    #[inline(always)]",
             f"    fn {name}<'a>({var}: impl Fn(usize) -> &'a Lanes) -> [Lanes; {rows}] {{"]
    lines.append("        let (" + ", ".join(f"{var}{k}" for k in range(cols)) + ") = ("
                 + ", ".join(f"{var}({k})" for k in range(cols)) + ");")
    lines.append(f"        let mut o = [[0.0f32; L]; {rows}];")
    lines.append("        for j in 0..L {")
    for i in range(rows):
        lines.append(f"            o[{i}][j] = {expression(list(mat[i, :]), var)};")
    lines.append("        }")
    lines.append("        o")
    lines.append("    }")
    return "\n".join(lines)


def main():
    for name, m, r, points in ALGORITHMS:
        at, g, bt = matrices(m, r, points)
        a = m + r - 1
        print(f"// {name}: points {', '.join(str(p) for p in points)}, infinity; "
              f"f32 error of a tile over 48 channels {f32_error(at, g, bt, m, r):.1e}")
        print(f"impl Variant<{a}, {m}, {r}> for {name} {{")
        for cname, mat, f64 in (("BT", bt, False), ("AT", at, False), ("G", g, True)):
            ty = "f64" if f64 else "f32"
            rows, cols = mat.shape
            print(f"    const {cname}: [[{ty}; {cols}]; {rows}] = [")
            for i in range(rows):
                print("        [" + ", ".join(rust(mat[i, j], f64) for j in range(cols)) + "],")
            print("    ];")
        print(function("bt", bt, "d"))
        print(function("at", at, "m"))
        print("}")


if __name__ == "__main__":
    main()
