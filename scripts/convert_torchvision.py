#!/usr/bin/env python3
"""Converts torchvision's AlexNet to this project's weights file.

torchvision's `alexnet` is the "one weird trick" variant (Krizhevsky 2014), the network
`TorchvisionAlexNet` of src/nets.rs (`--net torchvision`): 224x224 input, 64/192/384/256/256
filters, no LRN, no groups. Its state_dict names (`features.0.weight`, ...,
`classifier.6.bias`) become the project's layer names (`conv1.weight`, ..., `fc8.bias`);
the layouts are already the same (convolution weights [out, in, kh, kw], fully connected
weights [out, in], the flattening before fc6 in channel, row, column order), so values are
copied unchanged as f32.

Usage (needs torch, torchvision, safetensors and numpy: pip install torch torchvision
safetensors numpy):

  python3 scripts/convert_torchvision.py alexnet-torchvision.safetensors
      downloads torchvision's ImageNet weights (IMAGENET1K_V1, top-1 56.5%) and converts them
  python3 scripts/convert_torchvision.py --pth alexnet.pth out.safetensors
      converts a saved state_dict (torch.save(model.state_dict(), ...)) or a whole saved
      model (torch.save(model, ...))

Then: cargo run --release --example alexnet -- classify --net torchvision \\
          --weights alexnet-torchvision.safetensors photo.jpg
"""
import argparse
import os
import sys

# torchvision's module index -> this project's layer name.
LAYERS = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}

# The shapes TorchvisionAlexNet expects (src/nets.rs), checked before writing.
SHAPES = {
    "conv1.weight": (64, 3, 11, 11), "conv1.bias": (64,),
    "conv2.weight": (192, 64, 5, 5), "conv2.bias": (192,),
    "conv3.weight": (384, 192, 3, 3), "conv3.bias": (384,),
    "conv4.weight": (256, 384, 3, 3), "conv4.bias": (256,),
    "conv5.weight": (256, 256, 3, 3), "conv5.bias": (256,),
    "fc6.weight": (4096, 9216), "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
    "fc8.weight": (1000, 4096), "fc8.bias": (1000,),
}


def convert(state_dict):
    """The project's tensors (name -> float32 numpy array) from a torchvision AlexNet
    state_dict; an error naming what does not fit."""
    import numpy as np

    out = {}
    unknown = []
    for key, value in state_dict.items():
        # A model saved from DataParallel prefixes every key with `module.`.
        key = key[len("module."):] if key.startswith("module.") else key
        prefix, _, kind = key.rpartition(".")
        if prefix not in LAYERS or kind not in ("weight", "bias"):
            unknown.append(key)
            continue
        name = f"{LAYERS[prefix]}.{kind}"
        array = value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value)
        out[name] = np.ascontiguousarray(array, dtype=np.float32)
    if unknown:
        raise SystemExit(f"not torchvision's AlexNet: unexpected tensors {unknown[:5]}")
    missing = sorted(set(SHAPES) - set(out))
    if missing:
        raise SystemExit(f"not torchvision's AlexNet: missing {missing}")
    for name, shape in SHAPES.items():
        if tuple(out[name].shape) != shape:
            raise SystemExit(f"{name}: shape {tuple(out[name].shape)}, TorchvisionAlexNet expects {shape}")
        if not np.isfinite(out[name]).all():
            raise SystemExit(f"{name}: not every value is finite")
    return out


def load_pth(path):
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(obj, "state_dict"):
        return obj.state_dict(), f"{os.path.basename(path)} (a saved model)"
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"], os.path.basename(path)
    if isinstance(obj, dict):
        return obj, os.path.basename(path)
    raise SystemExit(f"{path}: neither a state_dict nor a model")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", help="the safetensors file to write")
    ap.add_argument("--pth", help="a saved state_dict or model (default: download torchvision's ImageNet weights)")
    args = ap.parse_args()
    if args.pth:
        state, source = load_pth(args.pth)
    else:
        import torchvision

        weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
        state = torchvision.models.alexnet(weights=weights).state_dict()
        source = f"torchvision {torchvision.__version__} AlexNet_Weights.IMAGENET1K_V1"
    tensors = convert(state)
    from safetensors.numpy import save_file

    # Written beside the target and renamed, so that an interrupted run leaves no half file.
    tmp = args.output + ".tmp"
    save_file(tensors, tmp, metadata={"network": "TorchvisionAlexNet", "source": source})
    os.replace(tmp, args.output)
    params = sum(t.size for t in tensors.values())
    print(f"wrote {args.output}: {len(tensors)} tensors, {params:,} parameters, from {source}")


if __name__ == "__main__":
    sys.exit(main())
