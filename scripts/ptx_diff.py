#!/usr/bin/env python3
"""Compares the PTX of two sets of generated kernels, kernel by kernel.

Usage: ptx_diff.py OLD_DIR NEW_DIR [ARCH]

Each directory holds one translation unit per kernel, `<network>__<kernel>.cu` (the
kernel's source as the generator gives it, headers inlined). Both sets are compiled to PTX
with NVRTC (libnvrtc.so.13 on LD_LIBRARY_PATH, e.g. the pinned wheel .ci/run installs) for
ARCH (default compute_90); each kernel's `.entry` is cut out of its unit's PTX, comments
and blank lines dropped, and compared with the other set's. Used when the templates change
form but should compile to the same code (issue 12: `{{KEY}}` templates to function
templates over a Cfg struct). Prints one line per kernel that differs and a summary;
exits 1 when any kernel differs or is missing.
"""
import ctypes
import os
import re
import sys


def nvrtc():
    lib = ctypes.CDLL("libnvrtc.so.13")
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                       ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                       ctypes.c_void_p]
    lib.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcGetPTXSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetPTX.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nvrtcGetProgramLogSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetProgramLog.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    return lib


def ptx(lib, source, name, arch):
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                  None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    if rc != 0:
        n = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(f"{name}: {log.value.decode()}")
    n = ctypes.c_size_t()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, buf)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.value.decode()


def symbol(decl):
    """The name a module-level declaration declares."""
    m = re.search(r"([\w$]+)\s*(\[[^\]]*\])?\s*(=.*)?;\s*$", decl)
    return m.group(1) if m else decl


def entries(text):
    """Each `.entry` of a PTX module, by name, without comments and blank lines, with the
    module-level declarations it uses (shared arrays, variables) prepended; and the
    module-level declarations no entry uses."""
    lines = [l for l in text.splitlines() if l.strip() and not l.strip().startswith("//")]
    decls = [l for l in lines if l.startswith((".shared", ".global", ".const"))]
    bodies = []
    out = {}
    i = 0
    while i < len(lines):
        m = re.match(r"\s*\.visible \.entry (\w+)\(", lines[i])
        if not m:
            i += 1
            continue
        j = i
        while lines[j] != "}":
            j += 1
        body = "\n".join(lines[i:j + 1])
        bodies.append(body)
        used = [d for d in decls if symbol(d) in body]
        out[m.group(1)] = normalise("\n".join(used + [body]))
        i = j + 1
    unused = [d for d in decls if not any(symbol(d) in b for b in bodies)]
    return out, unused


def normalise(text):
    """Names that depend only on where a kernel sits: mangled symbols (the shared arrays of
    gemm_tile carry the enclosing function's name in theirs) numbered by first appearance,
    and the function's index in a label's prefix (`$L__BB1_7` for a module's second
    function)."""
    names = {}

    def rename(m):
        return names.setdefault(m.group(0), f"_Z#{len(names)}")

    text = re.sub(r"_Z\w+", rename, text)
    return re.sub(r"\$L__BB\d+_", "$L__BB_", text)


def main():
    old_dir, new_dir = sys.argv[1], sys.argv[2]
    arch = sys.argv[3] if len(sys.argv) > 3 else "compute_90"
    lib = nvrtc()
    sets = []
    unused_counts = []
    for d in (old_dir, new_dir):
        kernels = {}
        unused = 0
        for f in sorted(os.listdir(d)):
            if not f.endswith(".cu"):
                continue
            net, kernel = f[:-3].split("__", 1)
            text = ptx(lib, open(os.path.join(d, f)).read(), f, arch)
            got, spare = entries(text)
            unused += len(spare)
            if kernel not in got:
                raise RuntimeError(f"{d}/{f}: no entry {kernel} in {list(got)}")
            kernels[(net, kernel)] = got[kernel]
        sets.append(kernels)
        unused_counts.append(unused)
    old, new = sets
    same = differ = 0
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            print(f"missing in {'old' if key not in old else 'new'}: {key[0]} {key[1]}")
            differ += 1
        elif old[key] == new[key]:
            same += 1
        else:
            a, b = old[key].splitlines(), new[key].splitlines()
            first = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"differs: {key[0]} {key[1]}: {len(a)} vs {len(b)} lines, first at line {first}:"
                  f"\n    old: {a[first] if first < len(a) else '<end>'}"
                  f"\n    new: {b[first] if first < len(b) else '<end>'}")
            differ += 1
    print(f"{same} kernels identical in PTX ({arch}), {differ} different or missing")
    print(f"module-level variables no kernel uses: {unused_counts[0]} old, {unused_counts[1]} new")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
