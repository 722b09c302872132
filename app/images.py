"""normalize(): directory photo bytes -> a square PNG avatar. Pure: no I/O, no global state.

Why each step:
- only JPEG/PNG/GIF/WEBP decoders run: most Pillow CVEs live in decoders an avatar never needs;
- bytes and pixels are capped from the header, before any pixel is decoded (decompression bombs;
  Pillow's own warning between ~89 and ~179 MP is left alone: max_photo_pixels is far below);
  a JPEG counts by the size it is decoded at (1/2..1/8 a side, below), other formats in full;
- JPEG ``draft`` decodes big photos at 1/2..1/8 scale in the DCT domain (fast, little memory);
- EXIF orientation is applied, the first frame of an animation is used;
- every mode ends as RGB or RGBA, 16-bit greys are scaled (a plain convert would clip to white);
- centred square crop, never scaled up, always re-encoded (never pass directory bytes through).
"""

from __future__ import annotations

import io
import zlib

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
# zlib's run-length strategy: a photo's noise leaves little for a search of earlier bytes to
# find, so level 6 cost 2.4x level 1 for 1% fewer bytes, and Z_RLE takes a fifth to a quarter
# less time than level 1 at about the same size (bench_normalize, docs/performance.md)
PNG_OPTIONS = {"optimize": False, "compress_level": 1, "compress_type": zlib.Z_RLE}


class InvalidPhoto(ValueError):
    """The directory photo cannot become an avatar; the message says why (shown to admins)."""


def normalize(
    raw: bytes,
    size: int = 256,
    *,
    crop: str = "center",
    max_bytes: int = 5 * 1024 * 1024,
    max_pixels: int = 4_000_000,
) -> bytes:
    """Return PNG bytes of a square of ``raw``, at most ``size`` px a side: centred, or with
    ``crop="upper"`` the top of a tall picture (a portrait's head is rarely in its middle;
    a wide picture is centred either way)."""
    im = _decode(raw, size, max_bytes, max_pixels)
    width, height = im.size
    side = min(width, height)
    left, top = (width - side) // 2, (0 if crop == "upper" else (height - side) // 2)
    target = min(size, side)  # never scale up
    box = (left, top, left + side, top + side)
    if target == side:
        im = im.crop(box)
    else:
        im = im.resize((target, target), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    out = io.BytesIO()
    im.save(out, format="PNG", **PNG_OPTIONS)
    return out.getvalue()


def _decode(raw: bytes, size: int, max_bytes: int, max_pixels: int) -> Image.Image:
    """The photo decoded upright in RGB(A), within the limits; InvalidPhoto says why not."""
    if not raw:
        raise InvalidPhoto("empty photo")
    if len(raw) > max_bytes:
        raise InvalidPhoto(f"photo is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        im: Image.Image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
        width, height = im.size
        if width < 1 or height < 1:
            raise InvalidPhoto(f"image has no pixels ({width}x{height})")
        # A JPEG is decoded at down to 1/8 a side (draft, below): what counts is what is decoded.
        if width * height > max_pixels * (64 if im.format == "JPEG" else 1):
            raise InvalidPhoto(f"image is {width}x{height}, over the limit of {max_pixels} pixels")
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # keeps both sides >= size
            if im.size[0] * im.size[1] > max_pixels:
                raise InvalidPhoto(
                    f"image is {width}x{height}, over the limit of {max_pixels} pixels "
                    f"even decoded at {im.size[0]}x{im.size[1]}"
                )
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im))
    except InvalidPhoto:
        raise
    except UnidentifiedImageError:
        raise InvalidPhoto("not a JPEG, PNG, GIF or WebP image") from None
    except Image.DecompressionBombError as exc:
        raise InvalidPhoto(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise InvalidPhoto(f"image data is corrupt: {exc}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGBA when the image has any transparency, RGB otherwise."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return im.convert("RGBA")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greys: scale 0..65535 down to 0..255; convert("L") alone would clip.
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if mode == "RGB":
        return im
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, F ...


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding it."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
