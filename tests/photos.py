"""Test photos with a known layout: four coloured quadrants, so a test can check orientation,
cropping and colour by looking at pixels rather than trusting that no exception was raised.
``portrait()`` is the other kind: a photo that costs what a real one costs to re-encode."""
from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter

RED, GREEN, BLUE, YELLOW = (220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 220, 20)


def quadrants(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right yellow."""
    im = Image.new("RGB", (width, height))
    hw, hh = width // 2, height // 2
    im.paste(RED, (0, 0, hw, hh))
    im.paste(GREEN, (hw, 0, width, hh))
    im.paste(BLUE, (0, hh, hw, height))
    im.paste(YELLOW, (hw, hh, width, height))
    return im if mode == "RGB" else im.convert(mode)


def encode(im: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        kwargs.setdefault("quality", 95)
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def photo(width: int = 300, height: int = 200, fmt: str = "JPEG") -> bytes:
    return encode(quadrants(width, height), fmt)


def portrait(width: int = 96, height: int = 96, seed: int = 0) -> bytes:
    """A JPEG that compresses like a real head-and-shoulders photo, not like flat colour.

    Soft shapes over a gradient, blurred, with a little sensor-like noise. Calibrated against
    real 720x477 photos: as a PNG (level 6) it takes ~2.0 bytes a pixel at 96 px and ~1.9 at
    256 px, where the real photos took 2.0-2.4 and 1.8-2.2. The quadrants of ``photo()`` take
    a tiny fraction of that, so a benchmark using them under-states what encoding costs.
    """
    rng = random.Random(seed)
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(30):
        x, y = rng.randrange(width), rng.randrange(height)
        rx, ry = rng.randrange(4, max(5, width // 3)), rng.randrange(4, max(5, height // 3))
        fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(min(width, height) / 60))
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    return encode(Image.blend(im, noise, 0.12), "JPEG", quality=90)


KINDS = ("portrait", "quadrants")


def of_kind(kind: str, width: int, height: int) -> bytes:
    """The benchmarks' photo: ``portrait`` (costs what a real one does) or ``quadrants``."""
    return portrait(width, height) if kind == "portrait" else photo(width, height)


def solid(colour, side: int = 120, fmt: str = "JPEG") -> bytes:
    return encode(Image.new("RGB", (side, side), colour), fmt)


def with_orientation(visual: Image.Image, orientation: int) -> bytes:
    """A JPEG whose stored pixels, once EXIF ``orientation`` is applied, look like ``visual``.

    The stored image is the inverse of what the tag tells a viewer to do (EXIF 2.3, 4.6.4 A):
    e.g. 6 = "rotate 90 degrees clockwise to view", so the stored pixels are turned 90 CCW.
    """
    T = Image.Transpose
    stored = {
        1: lambda im: im,
        2: lambda im: im.transpose(T.FLIP_LEFT_RIGHT),
        3: lambda im: im.transpose(T.ROTATE_180),
        4: lambda im: im.transpose(T.FLIP_TOP_BOTTOM),
        5: lambda im: im.transpose(T.TRANSPOSE),
        6: lambda im: im.transpose(T.ROTATE_90),    # PIL's ROTATE_90 is counter-clockwise
        7: lambda im: im.transpose(T.TRANSVERSE),
        8: lambda im: im.transpose(T.ROTATE_270),
    }[orientation](visual)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", exif=exif.tobytes())


def corners(png: bytes) -> dict:
    """Colours sampled well inside each quadrant of a decoded avatar."""
    im = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = im.size
    at = lambda fx, fy: im.getpixel((int(w * fx), int(h * fy)))  # noqa: E731
    return {"tl": at(0.2, 0.2), "tr": at(0.8, 0.2), "bl": at(0.2, 0.8), "br": at(0.8, 0.8)}


def close(c1, c2, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(c1[:3], c2[:3]))


def dominant(png: bytes):
    im = Image.open(io.BytesIO(png)).convert("RGB")
    return im.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
