#!/usr/bin/env python3
"""PyTorch reference on the same GPU, for docs/benchmarks.md: the paper's AlexNet
(227x227, grouped conv2/conv4/conv5, LRN within each tower, overlapping pooling, dropout),
fp32 with TF32 off, eager. Prints inference ms at batch 128 and a training step (SGD,
momentum 0.9, weight decay 5e-4, cross-entropy) at batch 128 and 32, median of 20 after
warm-up, the batch on the device. Run by scripts/gpu-check.sh on the lent machine."""
import statistics
import sys
import time

import torch
import torch.nn as nn


class TowerLRN(nn.Module):
    """LRN within each of the two towers, as the paper's two GPUs computed it."""

    def __init__(self):
        super().__init__()
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([self.lrn(a), self.lrn(b)], dim=1)


def alexnet():
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), TowerLRN(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), TowerLRN(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000),
    )


def timed(f, runs=20, warm=5):
    for _ in range(warm):
        f()
    torch.cuda.synchronize()
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        f()
        torch.cuda.synchronize()
        t.append(time.perf_counter() - s)
    return statistics.median(t)


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    net = alexnet().to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    for batch in (128, 32):
        x = torch.randn(batch, 3, 227, 227, device=dev)
        y = torch.randint(0, 1000, (batch,), device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

        net.train()
        t = timed(step)
        print(f"torch eager fp32 (no TF32) training step, batch {batch}: {t * 1e3:.2f} ms ({batch / t:.0f} images/s)")
        net.eval()
        with torch.no_grad():
            t = timed(lambda: net(x))
        print(f"torch eager fp32 (no TF32) inference, batch {batch}: {t * 1e3:.2f} ms ({batch / t:.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
