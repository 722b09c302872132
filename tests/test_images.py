"""normalize(): pixels are checked (a coloured quadrant lands where it should), not just
that no exception was raised."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from app.images import InvalidPhoto, normalize, png_size
from tests import photos
from tests.photos import BLUE, GREEN, RED, YELLOW


def decode(png: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG"
    return im


def assert_upright(png: bytes):
    c = photos.corners(png)
    assert photos.close(c["tl"], RED), c
    assert photos.close(c["tr"], GREEN), c
    assert photos.close(c["bl"], BLUE), c
    assert photos.close(c["br"], YELLOW), c


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    visual = photos.quadrants(300, 200)  # landscape as the viewer should see it
    out = normalize(photos.with_orientation(visual, orientation), 256)
    assert decode(out).size == (200, 200)  # short side of the *visual* image, never upscaled
    assert_upright(out)


def test_big_photo_is_centre_cropped_and_scaled_down():
    out = normalize(photos.photo(6000, 4000), 256)
    assert decode(out).size == (256, 256)
    assert_upright(out)


def test_portrait_photo_is_centre_cropped():
    im = photos.quadrants(200, 400)
    # a red band marks the vertical centre, which a centred crop keeps in the middle
    im.paste((255, 255, 255), (0, 190, 200, 210))
    out = decode(normalize(photos.encode(im, "PNG"), 256))
    assert out.size == (200, 200)
    assert photos.close(out.convert("RGB").getpixel((100, 100)), (255, 255, 255))


def test_upper_crop_keeps_the_top_of_a_tall_portrait():
    im = photos.quadrants(200, 400)  # red/green over blue/yellow, the halves meeting at y=200
    im.paste((255, 255, 255), (0, 10, 200, 30))  # a white band near the top: the head
    raw = photos.encode(im, "PNG")
    upper = decode(normalize(raw, 256, crop="upper")).convert("RGB")
    assert upper.size == (200, 200)
    assert photos.close(upper.getpixel((100, 20)), (255, 255, 255))  # the band is kept...
    assert photos.close(upper.getpixel((50, 195)), RED)  # ...and nothing of the bottom half
    centre = decode(normalize(raw, 256)).convert("RGB")
    assert photos.close(centre.getpixel((50, 195)), BLUE)  # the centre crop loses the band
    assert not any(photos.close(centre.getpixel((100, y)), (255, 255, 255)) for y in range(200))


def test_upper_crop_centres_a_wide_picture_as_the_centre_crop_does():
    raw = photos.photo(400, 200, "PNG")
    assert normalize(raw, 256, crop="upper") == normalize(raw, 256)


def test_never_scaled_up():
    assert decode(normalize(photos.photo(100, 80, "PNG"), 256)).size == (80, 80)
    assert decode(normalize(photos.photo(48, 48, "PNG"), 256)).size == (48, 48)
    one = decode(normalize(photos.encode(Image.new("RGB", (1, 1), RED), "PNG"), 256))
    assert one.size == (1, 1) and photos.close(one.convert("RGB").getpixel((0, 0)), RED)


def test_target_size_from_config():
    assert decode(normalize(photos.photo(600, 600), 96)).size == (96, 96)


def test_cmyk_jpeg():
    out = normalize(photos.encode(photos.quadrants(300, 300, "CMYK"), "JPEG"), 256)
    assert decode(out).mode == "RGB"
    assert_upright(out)


def test_palette_with_transparency_keeps_alpha():
    im = photos.quadrants(100, 100).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    transparent_index = im.getpixel((90, 90))
    out = decode(normalize(photos.encode(im, "PNG", transparency=transparent_index), 256))
    assert out.mode == "RGBA"
    assert out.getpixel((90, 90))[3] == 0 and out.getpixel((10, 10))[3] == 255


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_modes(mode):
    im = photos.quadrants(120, 120).convert(mode)
    im.putalpha(Image.new("L", im.size, 128))
    out = decode(normalize(photos.encode(im, "PNG"), 256))
    assert out.mode == "RGBA" and out.getpixel((5, 5))[3] == 128


def test_sixteen_bit_grey_is_scaled_not_clipped():
    im = Image.new("I;16", (64, 64), 0x8000)  # mid grey in 16 bits
    out = decode(normalize(photos.encode(im, "PNG"), 256)).convert("RGB")
    assert abs(out.getpixel((10, 10))[0] - 128) <= 2


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (64, 64), c) for c in (RED, GREEN, BLUE)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert photos.close(photos.dominant(normalize(out.getvalue(), 256)), RED)


def test_deterministic():
    raw = photos.photo(640, 480)
    assert normalize(raw, 256) == normalize(raw, 256)


def test_png_size_reads_the_header():
    assert png_size(normalize(photos.photo(300, 200), 128)) == (128, 128)


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty"),
    (b"\x00\x01garbage" * 50, "not a JPEG"),
    (bytes(range(256)) * 20, "not a JPEG"),
    (photos.photo(400, 300)[:400], "corrupt"),
    (photos.encode(photos.quadrants(40, 40), "TIFF"), "not a JPEG"),  # decoder not on the whitelist
    (photos.encode(photos.quadrants(40, 40), "BMP"), "not a JPEG"),
])
def test_bad_input_is_invalid_photo(raw, reason):
    with pytest.raises(InvalidPhoto, match=reason):
        normalize(raw, 256)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a gigantic greyscale image (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * 1024
    idat = zlib.compress(row * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20_000, 60_000])
def test_decompression_bomb_is_rejected_before_decoding(side):
    bomb = png_bomb(side, side)
    assert len(bomb) < 10_000
    with pytest.raises(InvalidPhoto, match="too large|over the limit"):
        normalize(bomb, 256)


def test_byte_cap():
    with pytest.raises(InvalidPhoto, match="over the limit"):
        normalize(photos.photo(600, 600), 256, max_bytes=1000)


def test_the_default_pixel_limit_refuses_a_small_file_that_would_take_300_mb_to_decode():
    """6320 x 6320 in a PNG of about 150 KB: 40 MP, some 310 MB to decode. The default refuses
    it from the header, before any pixel is decoded."""
    from app.config import DEFAULT_MAX_PHOTO_PIXELS
    raw = photos.encode(Image.new("RGB", (6320, 6320)), "PNG")
    assert len(raw) < 200_000
    with pytest.raises(InvalidPhoto, match="over the limit"):
        normalize(raw, max_pixels=DEFAULT_MAX_PHOTO_PIXELS)
    assert DEFAULT_MAX_PHOTO_PIXELS * 8 <= 50_000_000  # ~8 bytes a pixel: at most 50 MB a decode
