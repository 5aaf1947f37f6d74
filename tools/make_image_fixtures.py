#!/usr/bin/env python3
"""Golden outputs for skillgraft's image resize (src/observe/image.rs), made by PyTorch.

A policy trained in PyTorch saw its images through `F.interpolate(mode="bilinear",
align_corners=False, antialias=False)` (OpenCV's INTER_LINEAR gives the same values); the Rust
tests check the runtime's resize against these values, so the robot feeds the model what it was
trained on. Each case holds the source pixels (8-bit, rows top to bottom, channels interleaved as
in a sensor_msgs/Image), the centre crop applied first (or none) and the model's [1, C, H, W]
float output before any scale or mean/std (rounded to 4 decimals).

    /path/to/venv/bin/python tools/make_image_fixtures.py   # writes tests/fixtures/images/bilinear.json

torch is pinned in tools/requirements-fixtures.txt.
"""

import json
import pathlib

import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images" / "bilinear.json"


def source(w, h, c):
    """A deterministic image with edges and gradients in every channel (no RNG to pin)."""
    return [[[(x * 37 + y * 91 + k * 53 + (x * y) % 7 * 29) % 256 for k in range(c)] for x in range(w)] for y in range(h)]


def centre_crop(sw, sh, w, h):
    """The largest centred region of aspect w:h, as skillgraft cuts it (floor of the margin / 2)."""
    if sw * h > sh * w:
        cw = min(sw, max(1, (2 * sh * w + h) // (2 * h)))
        return (sw - cw) // 2, 0, cw, sh
    ch = min(sh, max(1, (2 * sw * h + w) // (2 * w)))
    return 0, (sh - ch) // 2, sw, ch


def case(name, sw, sh, c, w, h, crop):
    pixels = source(sw, sh, c)
    x = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)
    if crop:
        x0, y0, cw, ch = centre_crop(sw, sh, w, h)
        x = x[:, :, y0 : y0 + ch, x0 : x0 + cw]
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return {
        "name": name,
        "src_width": sw,
        "src_height": sh,
        "channels": c,
        "src": [v for row in pixels for px in row for v in px],
        "width": w,
        "height": h,
        "crop": crop,
        "nchw": [round(float(v), 4) for v in y.flatten().tolist()],
    }


def main():
    cases = [
        case("shrink_fractional_rgb", 13, 9, 3, 5, 4, False),
        case("enlarge_rgb", 5, 4, 3, 9, 7, False),
        case("shrink_mono", 25, 15, 1, 7, 4, False),
        case("crop_wide_rgb", 20, 10, 3, 6, 6, True),
        case("crop_tall_mono", 9, 21, 1, 4, 3, True),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"torch": torch.__version__, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
