"""How much a long-running studio writes outside the feedback store per edit (Gradio's upload/output
cache, the studio's previews and download files), for 12 MP photos.

    python -m benchmarks.temp_growth --edits 200      # launch.py --tiny-demo on a temp data folder

Each edit uploads a different 12 MP JPEG (as a phone camera writes them) and asks for 2 candidates;
after each one the folders are measured. The tiny demo model makes small results, so what grows with
the photo is the upload side (Gradio keeps the upload, and the PNG it converts it to, in its cache);
the results side is reported per edit as measured. ``delete_cache`` (set in studio.app) removes cache
files older than its age, so the cache is bounded by the edits of that long; the previews folder is
pruned to a fixed count and emptied at start.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.diskspace import folder_size, human


def photo_12mp(i: int, base: Image.Image) -> bytes:
    """A distinct 4000x3000 JPEG: the base photo with a per-edit tint and grain (so no two hash alike)."""
    rng = np.random.default_rng(i)
    arr = np.asarray(base, dtype=np.int16) + rng.integers(-12, 13, (3000, 4000, 3), dtype=np.int16)
    arr += np.array([i % 7, (i * 3) % 11, (i * 5) % 13], dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="write the measurements as JSON here")
    a = ap.parse_args()
    from gradio_client import Client, handle_file
    from skimage import data as skdata

    from tests.studio_server import studio_server

    root = Path(tempfile.mkdtemp(prefix="temp-growth-"))
    cache = root / "gradio-cache"
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # the server inherits it: its cache is measured alone
    base = Image.fromarray(skdata.astronaut()).resize((4000, 3000), Image.Resampling.BICUBIC)
    data = root / "data"
    rows = []
    with studio_server(data) as url:
        client = Client(url, verbose=False, download_files=False)
        t0 = time.time()
        for i in range(a.edits):
            photo = root / "photo.jpg"
            photo.write_bytes(photo_12mp(i, base))
            client.predict(handle_file(str(photo)), "make it warmer", 2, False, 1.0, 2048, 1.0, i, False,
                           "mem:tiny-demo", "bench", api_name="/edit")
            row = {"edit": i + 1, "s": round(time.time() - t0, 1), "upload_bytes": photo.stat().st_size,
                   "gradio_cache": folder_size(cache), "previews": folder_size(data / "previews"),
                   "exports": folder_size(data / "exports"), "store_images": folder_size(data / "images")}
            rows.append(row)
            if (i + 1) % 10 == 0 or i == 0:
                print(json.dumps(row), flush=True)
    n = len(rows)
    per = {k: (rows[-1][k] - rows[0][k]) / max(1, n - 1) for k in ("gradio_cache", "previews", "exports",
                                                                     "store_images")}
    print(f"{n} edits of 12 MP JPEGs ({human(int(np.mean([r['upload_bytes'] for r in rows])))} each), "
          f"{rows[-1]['s']:.0f} s:")
    for k, v in per.items():
        print(f"  {k:13s} {human(int(v))} per edit; after {n}: {human(rows[-1][k])}")
    if a.out:
        a.out.write_text(json.dumps({"rows": rows, "per_edit": per}, indent=1))


if __name__ == "__main__":
    main()
