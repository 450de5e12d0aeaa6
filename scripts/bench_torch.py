#!/usr/bin/env python3
"""PyTorch reference on the same GPU, for docs/benchmarks.md. Run by scripts/gpu-check.sh on
the lent machine (its /opt/torch venv); runs anywhere with torch for a smoke test.

The network is the paper's AlexNet (227x227, grouped conv2/conv4/conv5, LRN within each tower,
overlapping pooling, dropout); `--net torchvision` takes torchvision's variant (224x224, no
groups, no LRN) instead. For every mode and batch it measures:

  forward  the whole forward pass, eval mode, no_grad, the batch already on the device;
  train    one training step: zero_grad, forward (dropout on), cross-entropy, backward, SGD
           (lr 0.01, momentum 0.9, weight decay 5e-4); AMP modes use torch.autocast, and
           amp-f16 a GradScaler (its inf check reads back one value per step, as in real use);
  stages   each layer (conv, ReLU, LRN, pool, fc) alone on its real input shape in the mode's
           precision, forward (eval, no_grad) and backward (autograd.grad of that layer alone:
           input and parameter gradients, conv1 parameters only). Eager convolutions are cuDNN
           (cudnn.benchmark on: its fastest algorithm), fc layers cuBLAS, so this is the table
           of each stage beside cuDNN / cuBLAS in the same precision. ReLU is its own stage
           here; the generated kernels fuse it into conv/fc.

Modes (the precision, then how it runs):
  f32        fp32, TF32 off for matmul and cuDNN (torch.backends.*.allow_tf32 = False)
  tf32       fp32 tensors, TF32 on for matmul and cuDNN
  f16, bf16  model and input cast with .to(dtype) (forward and stages; no training: see amp-*)
  amp-f16    fp32 model, torch.autocast(float16); training with a GradScaler
  amp-bf16   fp32 model, torch.autocast(bfloat16)
  compile-X  torch.compile(model, mode=--compile-mode, dynamic=False) of mode X (forward; and
             train for f32/tf32/amp-*); no stages. A compile failure is printed in one line and
             the run goes on. The first call's time (the compile) is reported as compile_s.

Timing: CUDA events around each call, the device synchronised before each (so batch 1 includes
launch overhead), warm-up first (more for torch.compile), median of --runs; the wall-clock median
too. images/s = batch / median. Every result is printed as it comes, a table at the end, and a
JSON file (--out; default $OUT/bench_torch.json when $OUT is set, else ./bench_torch.json) is
rewritten after every result, so a run cut short by a timeout keeps what it measured.

--budget-s stops starting new measurements once that many seconds have passed (the rest are
listed as skipped; a compile starts only with --compile-reserve-s left): eager modes run first,
then every compiled forward, then the compiled training steps.
--device cpu is for a smoke test only (needs --quick): TF32, autocast and torch.compile are
skipped there with a note."""
import argparse
import collections
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

EAGER_MODES = ["f32", "tf32", "f16", "bf16", "amp-f16", "amp-bf16"]
# Compiled modes last, the most useful first (a --budget-s cut drops the tail).
COMPILE_MODES = ["compile-tf32", "compile-amp-f16", "compile-bf16", "compile-f16",
                 "compile-f32", "compile-amp-bf16"]
ALL_MODES = EAGER_MODES + COMPILE_MODES
TRAIN_PRECISIONS = {"f32", "tf32", "amp-f16", "amp-bf16"}
STAGE_PRECISIONS = {"f32", "tf32", "f16", "bf16"}
LABEL = {
    "f32": "fp32 (no TF32)", "tf32": "TF32", "f16": "fp16", "bf16": "bf16",
    "amp-f16": "fp16 autocast (AMP)", "amp-bf16": "bf16 autocast (AMP)",
}


class TowerLRN(nn.Module):
    """LRN within each of the two towers, as the paper's two GPUs computed it."""

    def __init__(self):
        super().__init__()
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([self.lrn(a), self.lrn(b)], dim=1)


def alexnet():
    """The paper's AlexNet, 227x227 input."""
    return nn.Sequential(collections.OrderedDict([
        ("conv1", nn.Conv2d(3, 96, 11, stride=4)), ("relu1", nn.ReLU()), ("lrn1", TowerLRN()),
        ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=2)), ("relu2", nn.ReLU()),
        ("lrn2", TowerLRN()), ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=2)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=2)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, 2)),
        ("flatten", nn.Flatten()), ("drop6", nn.Dropout(0.5)), ("fc6", nn.Linear(9216, 4096)),
        ("relu6", nn.ReLU()), ("drop7", nn.Dropout(0.5)), ("fc7", nn.Linear(4096, 4096)),
        ("relu7", nn.ReLU()), ("fc8", nn.Linear(4096, 1000)),
    ]))


def alexnet_torchvision():
    """torchvision's AlexNet (torchvision.models.alexnet), 224x224 input."""
    return nn.Sequential(collections.OrderedDict([
        ("conv1", nn.Conv2d(3, 64, 11, stride=4, padding=2)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(64, 192, 5, padding=2)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(192, 384, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 256, 3, padding=1)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(256, 256, 3, padding=1)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, 2)), ("avgpool", nn.AdaptiveAvgPool2d((6, 6))),
        ("flatten", nn.Flatten()), ("drop6", nn.Dropout(0.5)), ("fc6", nn.Linear(9216, 4096)),
        ("relu6", nn.ReLU()), ("drop7", nn.Dropout(0.5)), ("fc7", nn.Linear(4096, 4096)),
        ("relu7", nn.ReLU()), ("fc8", nn.Linear(4096, 1000)),
    ]))


NETS = {"paper": (alexnet, 227), "torchvision": (alexnet_torchvision, 224)}


def split_list(values, cast=str):
    """Accepts "--batch 1 128" and "--batch 1,128"."""
    out = []
    for v in values:
        out += [cast(p) for p in str(v).split(",") if p.strip()]
    return out


def one_line(e):
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:300] if text else type(e).__name__


class Bench:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.t0 = time.monotonic()
        self.doc = {"meta": self.meta(), "results": [], "skipped": [], "errors": []}
        make, self.hw = NETS[args.net]
        self.make = make

    # ---------- bookkeeping ----------
    def meta(self):
        a = self.args
        m = {
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": a.device, "net": a.net, "batches": a.batch, "modes": a.modes,
            "runs": a.runs, "warmup": a.warmup, "compile_warmup": a.compile_warmup,
            "compile_mode": a.compile_mode, "cudnn_benchmark": True, "quick": a.quick,
            "timing": ("CUDA events, device synchronised before each call, median" if a.device == "cuda"
                       else "time.perf_counter, median"),
            "argv": sys.argv[1:],
        }
        if a.device == "cuda":
            p = torch.cuda.get_device_properties(0)
            m.update(gpu=torch.cuda.get_device_name(0), sm_count=p.multi_processor_count,
                     gpu_memory_gib=round(p.total_memory / 2**30, 1),
                     capability=f"{p.major}.{p.minor}")
            try:
                q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
                m["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
            except Exception as e:  # no nvidia-smi: the driver's CUDA version at least
                m["driver"] = None
                m["driver_note"] = one_line(e)
        else:
            m["cpu"] = platform.processor() or platform.machine()
            m["threads"] = torch.get_num_threads()
        return m

    def save(self):
        path = self.args.out
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1)
        os.replace(tmp, path)

    def elapsed(self):
        return time.monotonic() - self.t0

    def skip(self, mode, batch, kind, why):
        self.doc["skipped"].append({"mode": mode, "batch": batch, "kind": kind, "why": why})
        print(f"  skip {mode} {kind}, batch {batch}: {why}", flush=True)

    def error(self, mode, batch, kind, e):
        msg = one_line(e)
        self.doc["errors"].append({"mode": mode, "batch": batch, "kind": kind, "error": msg})
        print(f"  FAILED {mode} {kind}, batch {batch}: {msg}", flush=True)
        self.save()

    def record(self, mode, batch, kind, t, stage=None, pass_=None, extra=None):
        r = {"mode": mode, "batch": batch, "kind": kind, "ms": round(t["ms"], 4),
             "ms_wall": round(t["ms_wall"], 4), "ms_min": round(t["ms_min"], 4),
             "runs": t["runs"], "warmup": t["warmup"],
             "images_per_s": round(batch / (t["ms"] / 1e3), 1)}
        if stage:
            r["stage"] = stage
            r["pass"] = pass_
            r["input_shape"] = t.get("shape")
        if extra:
            r.update(extra)
        self.doc["results"].append(r)
        self.save()
        return r

    # ---------- timing ----------
    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, f, warm, runs):
        for _ in range(warm):
            f()
        self.sync()
        ev, wall = [], []
        for _ in range(runs):
            if self.cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                w = time.perf_counter()
                s.record()
                f()
                e.record()
                torch.cuda.synchronize()
                wall.append((time.perf_counter() - w) * 1e3)
                ev.append(s.elapsed_time(e))
            else:
                w = time.perf_counter()
                f()
                wall.append((time.perf_counter() - w) * 1e3)
        ms = ev if self.cuda else wall
        return {"ms": statistics.median(ms), "ms_min": min(ms), "ms_wall": statistics.median(wall),
                "runs": runs, "warmup": warm}

    # ---------- precision ----------
    def set_tf32(self, on):
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
        torch.set_float32_matmul_precision("high" if on else "highest")

    @staticmethod
    def parse(mode):
        compiled = mode.startswith("compile-")
        return (mode[len("compile-"):] if compiled else mode), compiled

    def setup(self, prec):
        """Returns (model, input dtype, autocast dtype or None)."""
        self.set_tf32(prec == "tf32")
        torch.manual_seed(0)
        with torch.device(self.dev):
            net = self.make()
        dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)
        net = net.to(dtype)
        amp = {"amp-f16": torch.float16, "amp-bf16": torch.bfloat16}.get(prec)
        return net, dtype, amp

    def autocast(self, amp):
        if amp is None:
            return torch.autocast(self.dev.type, enabled=False)
        return torch.autocast(self.dev.type, dtype=amp)

    def unsupported(self, prec, compiled):
        """Why a mode cannot run on this device, or None."""
        if self.cuda:
            return None
        if prec == "tf32":
            return "TF32 is CUDA-only"
        if prec in ("f16", "bf16"):
            return "CUDA only (torch has no CPU half kernel for LRN's avg_pool3d)"
        if prec.startswith("amp-"):
            return "autocast/GradScaler measured on CUDA only"
        if compiled and not self.args.cpu_compile:
            return "torch.compile skipped on CPU (--cpu-compile to try it)"
        return None

    # ---------- measurements ----------
    def compile(self, net):
        kw = {"dynamic": False}
        if self.args.compile_mode != "default":
            kw["mode"] = self.args.compile_mode
        return torch.compile(net, **kw)

    def forward(self, mode, batch):
        prec, compiled = self.parse(mode)
        net, dtype, amp = self.setup(prec)
        net.eval()
        x = torch.randn(batch, 3, self.hw, self.hw, device=self.dev, dtype=dtype)
        run = self.compile(net) if compiled else net
        extra = {}

        def f():
            with torch.no_grad(), self.autocast(amp):
                return run(x)
        if compiled:
            w = time.perf_counter()
            f()
            self.sync()
            extra["compile_s"] = round(time.perf_counter() - w, 2)
        warm = self.args.compile_warmup if compiled else self.args.warmup
        t = self.timed(f, warm, self.args.runs)
        r = self.record(mode, batch, "forward", t, extra=extra)
        self.say(mode, batch, "forward", r)

    def train(self, mode, batch):
        prec, compiled = self.parse(mode)
        net, dtype, amp = self.setup(prec)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()
        scaler = None
        if amp == torch.float16:
            scaler = (torch.amp.GradScaler(self.dev.type) if hasattr(torch.amp, "GradScaler")
                      else torch.cuda.amp.GradScaler())
        x = torch.randn(batch, 3, self.hw, self.hw, device=self.dev, dtype=dtype)
        y = torch.randint(0, 1000, (batch,), device=self.dev)
        run = self.compile(net) if compiled else net

        def step():
            opt.zero_grad(set_to_none=True)
            with self.autocast(amp):
                loss = loss_fn(run(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        extra = {}
        if compiled:
            w = time.perf_counter()
            step()
            self.sync()
            extra["compile_s"] = round(time.perf_counter() - w, 2)
        warm = self.args.compile_warmup if compiled else self.args.warmup
        t = self.timed(step, warm, self.args.runs)
        r = self.record(mode, batch, "train", t, extra=extra)
        self.say(mode, batch, "training step", r)

    def stages(self, mode, batch):
        prec, _ = self.parse(mode)
        net, dtype, _ = self.setup(prec)
        net.eval()
        x = torch.randn(batch, 3, self.hw, self.hw, device=self.dev, dtype=dtype)
        warm, runs = self.args.warmup, self.args.runs
        fwd_sum = bwd_sum = 0.0
        first = True
        for name, layer in net.named_children():
            try:
                with torch.no_grad():
                    y = layer(x)
            except Exception as e:  # the chain cannot go on past a layer that fails
                self.error(mode, batch, f"stage {name}", e)
                break
            if isinstance(layer, (nn.Flatten, nn.Dropout)):
                x = y
                continue
            shape = list(x.shape)
            try:
                with torch.no_grad():
                    t = self.timed(lambda: layer(x), warm, runs)
                t["shape"] = shape
                fwd_sum += t["ms"]
                self.record(mode, batch, "stage", t, stage=name, pass_="fwd")
                # backward of this layer alone: dL/dx (not for the first layer) and dL/dparams
                xi = x.detach().requires_grad_(not first)
                with torch.enable_grad():
                    yo = layer(xi)
                wrt = ([xi] if not first else []) + list(layer.parameters())
                bwd = ""
                if wrt:
                    g = torch.randn_like(yo)
                    tb = self.timed(lambda: torch.autograd.grad(yo, wrt, g, retain_graph=True), warm, runs)
                    tb["shape"] = shape
                    bwd_sum += tb["ms"]
                    self.record(mode, batch, "stage", tb, stage=name, pass_="bwd")
                    bwd = f", bwd {tb['ms']:.3f} ms"
                del yo, xi
                print(f"    {mode:5s} b{batch:<4d} {name:6s} in {tuple(shape)}: fwd {t['ms']:.3f} ms{bwd}", flush=True)
            except Exception as e:
                self.error(mode, batch, f"stage {name}", e)
            x = y
            first = False
        print(f"  torch eager {LABEL[prec]} stages, batch {batch}: sum fwd {fwd_sum:.3f} ms, "
              f"sum bwd {bwd_sum:.3f} ms", flush=True)

    def say(self, mode, batch, what, r):
        prec, compiled = self.parse(mode)
        how = "torch.compile" if compiled else "torch eager"
        c = f", compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
        print(f"{how} {LABEL[prec]} {what}, batch {batch}: {r['ms']:.3f} ms "
              f"({r['images_per_s']:.0f} images/s; wall {r['ms_wall']:.3f} ms{c})", flush=True)

    # ---------- driver ----------
    def plan(self):
        """Eager items first (mode by mode), then every compiled forward, then compiled training
        steps: a --budget-s cut drops the slowest to set up (compiles) first."""
        eager, cfwd, ctrain = [], [], []
        for mode in self.args.modes:
            prec, compiled = self.parse(mode)
            for b in self.args.batch:
                if compiled:
                    cfwd.append((mode, b, "forward"))
                    if prec in TRAIN_PRECISIONS:
                        ctrain.append((mode, b, "train"))
                    continue
                eager.append((mode, b, "forward"))
                if prec in TRAIN_PRECISIONS:
                    eager.append((mode, b, "train"))
                if prec in STAGE_PRECISIONS and not self.args.no_stages:
                    eager.append((mode, b, "stages"))
        return eager + cfwd + ctrain

    def run(self):
        m = self.doc["meta"]
        print(f"torch {m['torch']}, CUDA runtime {m['cuda_runtime']}, cuDNN {m['cudnn']}, "
              + (f"{m['gpu']} ({m['sm_count']} SMs), driver {m.get('driver')}" if self.cuda
                 else f"CPU {m['cpu']} ({m['threads']} threads)")
              + f", {m['date_utc']}; net {self.args.net}", flush=True)
        self.save()
        for mode, b, kind in self.plan():
            prec, compiled = self.parse(mode)
            why = self.unsupported(prec, compiled)
            if why:
                self.skip(mode, b, kind, why)
                continue
            left = self.args.budget_s - self.elapsed() if self.args.budget_s else None
            if left is not None and (left <= 0 or (compiled and left < self.args.compile_reserve_s)):
                self.skip(mode, b, kind, f"over --budget-s {self.args.budget_s:g} "
                                         f"({self.elapsed():.0f} s elapsed)")
                continue
            try:
                getattr(self, kind)(mode, b)
            except Exception as e:
                self.error(mode, b, kind, e)
            finally:
                if compiled:
                    try:
                        torch._dynamo.reset()
                    except Exception:
                        pass
                if self.cuda:
                    torch.cuda.empty_cache()
        self.doc["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        self.save()
        self.table()
        print(f"json: {self.args.out}", flush=True)

    def table(self):
        res = self.doc["results"]
        print("\n==== PyTorch summary (median ms, images/s) ====")
        print(f"{'mode':18s} {'batch':>5s}  {'forward':>22s}  {'train step':>22s}  {'compile s':>9s}")
        seen = []
        for r in res:
            k = (r["mode"], r["batch"])
            if r["kind"] in ("forward", "train") and k not in seen:
                seen.append(k)
        for mode, b in seen:
            cells, comp = [], []
            for kind in ("forward", "train"):
                r = next((r for r in res if r["mode"] == mode and r["batch"] == b and r["kind"] == kind), None)
                cells.append(f"{r['ms']:9.3f} ({r['images_per_s']:8.0f}/s)" if r else f"{'-':>22s}")
                if r and "compile_s" in r:
                    comp.append(f"{r['compile_s']:.0f}")
            print(f"{mode:18s} {b:5d}  {cells[0]}  {cells[1]}  {'/'.join(comp) or '-':>9s}")
        st = [r for r in res if r["kind"] == "stage"]
        if st:
            cols = []
            for r in st:
                k = (r["mode"], r["batch"])
                if k not in cols:
                    cols.append(k)
            names = []
            for r in st:
                if r["stage"] not in names:
                    names.append(r["stage"])
            for pass_ in ("fwd", "bwd"):
                lib = " (eager: cuDNN conv, cuBLAS fc)" if self.cuda else ""
                print(f"\nstages alone, {pass_}, median ms{lib}")
                print(f"{'stage':8s}" + "".join(f"{m + ' b' + str(b):>14s}" for m, b in cols))
                sums = [0.0] * len(cols)
                for n in names:
                    row = []
                    for i, (m, b) in enumerate(cols):
                        r = next((r for r in st if r["mode"] == m and r["batch"] == b
                                  and r["stage"] == n and r["pass"] == pass_), None)
                        row.append(f"{r['ms']:14.3f}" if r else f"{'-':>14s}")
                        sums[i] += r["ms"] if r else 0.0
                    print(f"{n:8s}" + "".join(row))
                print(f"{'sum':8s}" + "".join(f"{s:14.3f}" for s in sums))
        if self.doc["skipped"]:
            print(f"\nskipped: {len(self.doc['skipped'])} (see json); e.g. "
                  + "; ".join(f"{s['mode']} {s['kind']} b{s['batch']}: {s['why']}" for s in self.doc["skipped"][:3]))
        if self.doc["errors"]:
            print(f"errors: {len(self.doc['errors'])}")
            for e in self.doc["errors"]:
                print(f"  {e['mode']} {e['kind']} b{e['batch']}: {e['error']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", nargs="+", default=["1", "128"], help="batch sizes: 1 128 or 1,128 (default 1 128)")
    ap.add_argument("--modes", nargs="+", default=None,
                    help=f"subset of {', '.join(ALL_MODES)}; also 'eager', 'compile', 'all' (default all)")
    ap.add_argument("--net", choices=sorted(NETS), default="paper")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke test")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 30, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 5, quick 1)")
    ap.add_argument("--compile-warmup", type=int, default=None,
                    help="warm-up calls after the compiling call (default 10, quick 2)")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage measurements")
    ap.add_argument("--budget-s", type=float, default=0, help="start nothing new after this many seconds (0: no limit)")
    ap.add_argument("--compile-reserve-s", type=float, default=45,
                    help="with --budget-s, start a compile only with this much budget left (default 45)")
    ap.add_argument("--cpu-compile", action="store_true", help="on --device cpu, try torch.compile too")
    ap.add_argument("--out", default=None,
                    help="JSON output (default $OUT/bench_torch.json when $OUT is set, else ./bench_torch.json)")
    a = ap.parse_args()

    a.batch = split_list(a.batch, int)
    modes = split_list(a.modes) if a.modes else ["all"]
    expanded = []
    for m in modes:
        add = {"all": ALL_MODES, "eager": EAGER_MODES, "compile": COMPILE_MODES}.get(m, [m])
        for x in add:
            if x not in ALL_MODES:
                ap.error(f"unknown mode {x!r}; known: {', '.join(ALL_MODES)}")
            if x not in expanded:
                expanded.append(x)
    # eager first, compiled last, whatever the order given
    a.modes = [m for m in expanded if not m.startswith("compile-")] + [m for m in expanded if m.startswith("compile-")]
    a.runs = a.runs or (3 if a.quick else 30)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 5)
    a.compile_warmup = a.compile_warmup if a.compile_warmup is not None else (2 if a.quick else 10)
    if a.out is None:
        a.out = os.path.join(os.environ["OUT"], "bench_torch.json") if os.environ.get("OUT") else "bench_torch.json"
    if a.device == "cpu" and not a.quick:
        ap.error("--device cpu is for a smoke test only: add --quick")
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_torch: no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    Bench(a).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
