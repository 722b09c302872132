"""Benchmark: what normalize() costs per photo, and how much of it the PNG encoder's level is.

Run on demand (not part of the test suite):

    .venv/bin/python -m tests.bench.bench_normalize [--repeat 200]

For each photo kind (``portrait``: compresses like a real photo; ``quadrants``: four flat
colours, what the older benchmarks used) and each avatar size, it times normalize() itself and,
on the same decoded-and-cropped square, the PNG encode alone with zlib's default strategy at
levels 1 and 6 and with its run-length strategy (Z_RLE), and prints the encoded size, so the
encoder's settings are chosen by what they cost and what they save. The median of ``--repeat``
runs is reported, on one core, in one process.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from functools import partial

from PIL import Image

from app.images import PNG_OPTIONS, normalize
from tests import photos


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


ENCODINGS = {  # name: Pillow's PNG save options
    "level 1": {"optimize": False, "compress_level": 1},
    "level 6": {"optimize": False, "compress_level": 6},
    "Z_RLE": PNG_OPTIONS,  # what normalize() uses
}


def png(im: Image.Image, options: dict) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG", **options)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    kinds = {
        # a directory thumbnail is smaller than the avatar it becomes: 96 px stays 96 px
        "portrait": lambda px: photos.portrait(px, px * 5 // 4),
        "quadrants": lambda px: photos.photo(px, px * 5 // 4),
    }
    print(f"{'photo':<10} {'px':>4} {'normalize':>10} | "
          + " | ".join(f"{name}: {'ms':>5} {'KB':>6}" for name in ENCODINGS))
    for kind, make in kinds.items():
        for px in (96, 256):
            raw = make(px)
            square = Image.open(io.BytesIO(normalize(raw, px))).convert("RGB")
            square.load()
            cells = []
            for name, options in ENCODINGS.items():
                ms = median_ms(partial(png, square, options), args.repeat)
                cells.append(f"{name}: {ms:5.2f} {len(png(square, options)) / 1024:6.1f}")
            total = median_ms(partial(normalize, raw, px), args.repeat)
            print(f"{kind:<10} {px:>4} {total:8.2f}ms | " + " | ".join(cells))


if __name__ == "__main__":
    main()
