"""Writes tests/fixtures/cmyk.jpg: a 20x12 CMYK JPEG (the colour type Photoshop and some
cameras write), green in the left half, red in the right, for the loader's colour-type
test (alexnet-runtime/src/data/folder.rs). Needs Pillow: pip install pillow."""
from pathlib import Path

from PIL import Image

im = Image.new("CMYK", (20, 12), (0, 255, 255, 0))  # red: no cyan, full magenta and yellow
for x in range(10):
    for y in range(12):
        im.putpixel((x, y), (255, 0, 255, 0))  # green: full cyan and yellow
out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cmyk.jpg"
im.save(out, quality=95)
print(f"wrote {out} ({out.stat().st_size} bytes)")
