"""Benchmark: what normalize() costs per photo, and how much of it the PNG encoder's level is.

Run on demand (not part of the test suite):

    .venv/bin/python -m tests.bench.bench_normalize [--repeat 200]

For each photo kind (``portrait``: compresses like a real photo; ``quadrants``: four flat
colours, what the older benchmarks used) and each avatar size, it times normalize() itself and,
on the same decoded-and-cropped square, the PNG encode alone at zlib levels 1, 2 and 6, and
prints the encoded size, so a level is chosen by what it costs and what it saves. The median of
``--repeat`` runs is reported, on one core, in one process.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

from PIL import Image

from app.images import normalize
from tests import photos


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def png(im: Image.Image, level: int) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=False, compress_level=level)
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
          + " | ".join(f"level {lv}: {'ms':>5} {'KB':>6}" for lv in (1, 2, 6)))
    for kind, make in kinds.items():
        for px in (96, 256):
            raw = make(px)
            square = Image.open(io.BytesIO(normalize(raw, px))).convert("RGB")
            square.load()
            cells = []
            for level in (1, 2, 6):
                ms = median_ms(lambda: png(square, level), args.repeat)
                cells.append(f"level {level}: {ms:5.2f} {len(png(square, level)) / 1024:6.1f}")
            total = median_ms(lambda: normalize(raw, px), args.repeat)
            print(f"{kind:<10} {px:>4} {total:8.2f}ms | " + " | ".join(cells))


if __name__ == "__main__":
    main()
