#!/usr/bin/env python3
"""The pretrained path checked against torchvision: tests/fixtures/pretrained.safetensors.

No pretrained weights can be downloaded where the tests run, so torchvision's AlexNet gets
random weights from the counter-based hash the Rust tests reproduce (scripts/make_fixtures.py,
`hash_uniform`), under torchvision's own names. This script

1. writes three real photographs from scikit-image's sample data as JPEG files
   (tests/fixtures/photos: a square one, a landscape one and a portrait crop, so that both
   orientations of the resize and the centre crop are exercised);
2. prepares them with torchvision's transforms as its ImageNet models expect
   (Resize(256), CenterCrop(224) on the PIL image; ToTensor; Normalize with ImageNet's mean
   and std) and stores the 8-bit patches before normalisation (`<photo>.pixels`, [3, 224,
   224], uint8: ToTensor divides them by 255 exactly, so the normalised input follows);
3. saves the model's state_dict with torch.save, converts it with
   scripts/convert_torchvision.py (the command the README gives), checks that every
   converted tensor equals the hashed weights under the project's names, and stores 64
   signed sums of each converted tensor (`weights.<name>.sketch`, f64), so that the Rust
   test can check the conversion against its own hashed weights without the 244 MB file;
4. runs torchvision's model (eval mode, f32, CPU) on the normalised patches and stores
   the logits (`logits`, [3, 1000]).

Run (torch, torchvision, scikit-image, pillow, numpy, safetensors, onnx, onnxruntime):
  python3 scripts/make_imagenet_fixture.py [--seed N]
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import PIL
import skimage
import torch
import torchvision
from PIL import Image
from safetensors.numpy import load_file, save_file
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_torchvision import LAYERS, SHAPES  # noqa: E402
from make_fixtures import hash_uniform, sketch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")

# The project's parameter order (src/nets.rs, TorchvisionAlexNet): the hash's stream index.
ORDER = [f"{layer}.{kind}" for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
         for kind in ("weight", "bias")]


def photos():
    """(name, RGB uint8 HWC array) of three scikit-image sample photographs."""
    rocket = skimage.data.rocket()  # 427 x 640
    return [
        ("astronaut", skimage.data.astronaut()),  # 512 x 512
        ("chelsea", skimage.data.chelsea()),  # 300 x 451, landscape, a tabby cat
        ("rocket", np.ascontiguousarray(rocket[:, 170:470])),  # 427 x 300, portrait
    ]


def hashed_state_dict(seed):
    """torchvision's AlexNet state_dict filled from the hash, and the same tensors under the
    project's names."""
    ours = {}
    for stream, name in enumerate(ORDER):
        shape = SHAPES[name]
        bound = 0.1 if len(shape) == 1 else np.sqrt(6.0 / np.prod(shape[1:]))
        ours[name] = hash_uniform(seed, stream, int(np.prod(shape)), bound).reshape(shape)
    back = {v: k for k, v in LAYERS.items()}
    state = {}
    for name, array in ours.items():
        layer, kind = name.split(".")
        state[f"{back[layer]}.{kind}"] = torch.from_numpy(array.copy())
    return state, ours


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None, help="weight seed (default: random)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    torch.use_deterministic_algorithms(True)

    photo_dir = os.path.join(ROOT, "tests", "fixtures", "photos")
    os.makedirs(photo_dir, exist_ok=True)
    prepare = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    normalise = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    tensors, names, batch = {}, [], []
    for name, rgb in photos():
        path = os.path.join(photo_dir, f"{name}.jpg")
        Image.fromarray(rgb).save(path, quality=92)
        img = Image.open(path).convert("RGB")  # what a user's file goes through
        patch = prepare(img)
        tensors[f"{name}.pixels"] = np.ascontiguousarray(np.asarray(patch, dtype=np.uint8).transpose(2, 0, 1))
        batch.append(normalise(patch))
        names.append(name)
        print(f"{path}: {img.width}x{img.height}, {os.path.getsize(path) / 1e3:.0f} kB")

    state, ours = hashed_state_dict(seed)
    model = torchvision.models.alexnet(weights=None)
    model.load_state_dict(state)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "alexnet.pth")
        torch.save(model.state_dict(), pth)
        converted_path = os.path.join(tmp, "converted.safetensors")
        subprocess.run([sys.executable, os.path.join(HERE, "convert_torchvision.py"), "--pth", pth, converted_path],
                       check=True)
        converted = load_file(converted_path)
    assert sorted(converted) == sorted(ours), sorted(converted)
    for name, array in ours.items():
        assert converted[name].dtype == np.float32 and np.array_equal(converted[name], array), name
        tensors[f"weights.{name}.sketch"] = sketch(converted[name])
    with torch.no_grad():
        logits = model(torch.stack(batch)).numpy()
    tensors["logits"] = np.ascontiguousarray(logits, dtype=np.float32)

    meta = {
        "weight_seed": str(seed), "photos": ",".join(names),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
        "scikit-image": skimage.__version__, "numpy": np.__version__,
    }
    out = os.path.join(ROOT, "tests", "fixtures", "pretrained.safetensors")
    save_file(tensors, out, metadata=meta)
    top = logits.argmax(axis=1)
    print(f"{out}: {len(tensors)} tensors, {os.path.getsize(out) / 1e3:.0f} kB, seed {seed}, top-1 classes {top}")


if __name__ == "__main__":
    main()
