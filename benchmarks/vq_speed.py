"""Encode and decode time of image tokenizers on one photo, in the same process.

    python -m benchmarks.vq_speed                      # the shipped bundle's tokenizer
    python -m benchmarks.vq_speed --vq A B --threads 1  # several, in one process; ratios against the first

The target is encoding + decoding one image well under 0.1 s on CPU. An equivariant tokenizer
(``NanoVQ(equivariant=True)``) runs its encoder once per symmetry of the square, 8 times; this prints
what that costs against the plain one (median of ``--reps`` after a warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from engine.image_io import fit_to_area
from engine.vq import NanoVQ

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vq", nargs="+", default=[str(ROOT / "assets/earl-nano/vq")])
    ap.add_argument("--image", default=str(ROOT / "assets/examples/chelsea.jpg"))
    ap.add_argument("--area", type=int, default=128 * 128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    parts = []
    for i, path in enumerate(a.vq):
        vq = NanoVQ.from_pretrained(path).eval()
        img = fit_to_area(Image.open(a.image).convert("RGB"), a.area, vq.spatial_factor)
        codes = vq.encode([img])
        enc, dec = median_ms(lambda vq=vq, img=img: vq.encode([img]), a.reps), median_ms(lambda vq=vq, c=codes: vq.decode(c), a.reps)
        kind = "equivariant" if vq.config.equivariant else "plain"
        print(f"{path}: {kind}, {img.width}x{img.height}, encode {enc:.1f} ms, decode {dec:.1f} ms, both {enc + dec:.1f} ms")
        parts += [f"encode_ms_{i}={enc:.1f}", f"decode_ms_{i}={dec:.1f}"]
        if i == 0:
            base = enc
        else:
            parts.append(f"encode_ratio_{i}={enc / base:.2f}")
    print("vq_speed " + " ".join(parts) + f" threads={a.threads}")


if __name__ == "__main__":
    main()
