"""How much a long-running studio writes outside the feedback store (Gradio's upload cache, the studio's
previews and download files), for 12 MP photos, and whether it stays under the temp-file cap.

    python -m benchmarks.temp_growth --edits 200      # launch.py --tiny-demo on a temp data folder

Each edit uploads a different 12 MP JPEG (as a phone camera writes them) and asks for 2 candidates;
after each one the folders are measured and one JSON line is printed (flushed, so a run stopped early
still gives its figures). The last line sums up the run in ``key=value`` form:

    temp_growth edits=N cap_mb=... temp_mb_max=... temp_mb_end=... cache_mb_max=... cache_mb_end=...
    previews_mb_max=... exports_copies_mb_max=... store_mb_end=... s_per_edit=...

``temp`` is what the cap (``studio.tempfiles``, ``--temp-cap-mb``) bounds: Gradio's cache, the previews
and the download files that are copies rather than hard links to stored images. ``store`` is the feedback
store's images: data, kept. The temp folder of the run is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.diskspace import folder_size
from studio.tempfiles import TEMP_CAP_BYTES

MB = 1024 * 1024


def photo_12mp(i: int, base: Image.Image) -> bytes:
    """A distinct 4000x3000 JPEG: the base photo with a per-edit tint and grain (so no two hash alike)."""
    rng = np.random.default_rng(i)
    arr = np.asarray(base, dtype=np.int16) + rng.integers(-12, 13, (3000, 4000, 3), dtype=np.int16)
    arr += np.array([i % 7, (i * 3) % 11, (i * 5) % 13], dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def copies_size(folder: Path) -> int:
    """Bytes of the files in ``folder`` that are not hard links (a link to a stored image costs no disk)."""
    if not folder.is_dir():
        return 0
    return sum(st.st_size for f in folder.iterdir() if (st := f.lstat()).st_nlink == 1)


def measure(edit: int, t0: float, photo: Path, cache: Path, data: Path) -> dict:
    """One row: the sizes of the temp folders and of the store's images after ``edit`` edits."""
    row = {"edit": edit, "s": round(time.time() - t0, 1), "upload_bytes": photo.stat().st_size,
           "gradio_cache": folder_size(cache), "previews": folder_size(data / "previews"),
           "exports": folder_size(data / "exports"), "exports_copies": copies_size(data / "exports"),
           "store_images": folder_size(data / "images")}
    row["temp"] = row["gradio_cache"] + row["previews"] + row["exports_copies"]
    return row


def summary(rows: list[dict], cap_bytes: int) -> str:
    """The run in one machine-readable line."""
    def mb_max(k: str) -> str:
        return f"{max(r[k] for r in rows) / MB:.1f}"

    def mb_end(k: str) -> str:
        return f"{rows[-1][k] / MB:.1f}"

    return (f"temp_growth edits={len(rows)} cap_mb={cap_bytes / MB:.0f} temp_mb_max={mb_max('temp')} "
            f"temp_mb_end={mb_end('temp')} cache_mb_max={mb_max('gradio_cache')} "
            f"cache_mb_end={mb_end('gradio_cache')} previews_mb_max={mb_max('previews')} "
            f"exports_copies_mb_max={mb_max('exports_copies')} store_mb_end={mb_end('store_images')} "
            f"s_per_edit={rows[-1]['s'] / len(rows):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--temp-cap-mb", type=float, default=TEMP_CAP_BYTES / MB,
                    help="the studio's temp-file cap (its --temp-cap-mb)")
    ap.add_argument("--out", type=Path, default=None, help="write the measurements as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the run's temp folder (data, Gradio's cache)")
    a = ap.parse_args()
    # stopped early (kill PID): still sum up, stop the studio and remove the temp folder
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from gradio_client import Client, handle_file
    from skimage import data as skdata

    from tests.studio_server import studio_server

    root = Path(tempfile.mkdtemp(prefix="temp-growth-"))
    cache = root / "gradio-cache"
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # the server inherits it: its cache is measured alone
    base = Image.fromarray(skdata.astronaut()).resize((4000, 3000), Image.Resampling.BICUBIC)
    data = root / "data"
    rows: list[dict] = []
    try:
        with studio_server(data, "--temp-cap-mb", str(a.temp_cap_mb)) as url:
            client = Client(url, verbose=False, download_files=False)
            t0 = time.time()
            for i in range(a.edits):
                photo = root / "photo.jpg"
                photo.write_bytes(photo_12mp(i, base))
                client.predict(handle_file(str(photo)), "make it warmer", 2, False, 1.0, 2048, 1.0, i, False,
                               "mem:tiny-demo", "bench", api_name="/edit")
                rows.append(measure(i + 1, t0, photo, cache, data))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if rows:
            if a.out:
                a.out.write_text(json.dumps({"rows": rows}, indent=1))
            print(summary(rows, int(a.temp_cap_mb * MB)), flush=True)
        if a.keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
