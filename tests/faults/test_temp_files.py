"""A long-running studio does not fill the disk with temp files: Gradio's cache, the previews and the
download files together stay under ``--temp-cap-mb`` however many edits are made, the least recently used
going first, and the page's current photo, results and download keep working."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from engine.diskspace import folder_size
from feedback.store import Store
from studio.tempfiles import TempFiles
from studio.uploads import GONE
from tests.studio_server import studio_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

MODEL = "mem:tiny-demo"
EDITS = 5
DOWNLOAD, PAIR_A = 8, 9  # /edit's API outputs: status, reasoning, seed, history, gallery, slider, heatmap,
# info, download, pair_a, pair_b, msg


def noise_photo(path: Path, i: int, size: tuple[int, int] = (160, 120)) -> Path:
    """A distinct PNG that does not compress (about 58 KB): uploads add up fast."""
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def temp_bytes(cache: Path, data: Path) -> int:
    """Disk the studio's temp files use: Gradio's cache, the previews, and the download files that are
    not hard links to stored images."""
    exports = sum(st.st_size for f in (data / "exports").glob("*") if (st := f.stat()).st_nlink == 1)
    return folder_size(cache) + folder_size(data / "previews") + exports


def test_many_edits_stay_under_the_cap_and_the_latest_result_downloads(tmp_path, monkeypatch, report) -> None:
    cache, data = tmp_path / "gradio-cache", tmp_path / "data"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))  # this studio's cache alone
    cap = 300 * 1024
    used, first_upload = [], None
    with studio_app(data, "--temp-cap-mb", str(cap / 2**20), "--examples", str(tmp_path / "none")) as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        for i in range(EDITS):
            photo = noise_photo(tmp_path / f"photo-{i}.png", i)
            out = client.predict(handle_file(str(photo)), "make it warmer", 2, False, 1.0, 2048, 1.0, i, False,
                                 MODEL, "tester", api_name="/edit")
            assert "Done" in out[0], out[0]
            used.append(temp_bytes(cache, data))
            first_upload = first_upload or next(cache.rglob("photo-0.png"))
        # the page still works: its download is the full-size result, its images load, it can be rated
        with Store(data) as store:
            latest = max((c for c in store.candidates() if c.idx == 0), key=lambda c: c.id)  # selected first
            full = store.load_image(latest.full_hash)
        with Image.open(out[DOWNLOAD]["value"]) as got:
            assert got.tobytes() == full.tobytes()
        with Image.open(out[PAIR_A]["value"]) as got:
            assert got.size == full.size
        assert "Saved" in client.predict("tester", api_name="/thumb_up")[0]
        uploads_left = sorted(p.name for p in cache.rglob("photo-*.png"))
        # a page still holding the first upload (as a browser does) is asked for the photo again
        stale = {"path": str(first_upload), "orig_name": "photo-0.png"}  # no "meta": the client sends it as is
        with pytest.raises(AppError) as gone:
            client.predict(stale, "make it warmer", 2, False, 1.0, 2048, 1.0, 0, False, MODEL, "tester",
                           api_name="/edit")
    assert GONE in str(gone.value)
    assert len(used) * used[0] > 2 * cap  # each edit adds as much as the first: unpruned, twice the cap
    assert max(used) <= cap, [u // 1024 for u in used]
    assert f"photo-{EDITS - 1}.png" in uploads_left and len(uploads_left) < EDITS  # the oldest went first
    with Store(data) as store:
        kept = len(store.candidates())
    assert kept == 2 * EDITS
    report(f"A long-running studio: {EDITS} edits with a {cap // 1024} KB temp-file cap (`--temp-cap-mb`)",
           "nothing while the page is in use: its photo, results, download and rating buttons keep working; a "
           f"page still holding an upload that was dropped: “{GONE}”",
           f"the temp files (Gradio's cache, previews, download copies) at most {max(used) // 1024} KB after "
           f"each edit ({len(used)} × the first edit's {used[0] // 1024} KB without the prune); {kept} of {kept} "
           "candidates in the store",
           temp_kb=[u // 1024 for u in used])


@pytest.fixture
def three_folders(tmp_path):
    """Two temp folders and a Gradio-like cache set, each file 10 KB and a second older than the next."""
    ours, other = tmp_path / "previews", tmp_path / "exports"
    cache = tmp_path / "cache"
    for d in (ours, other, cache):
        d.mkdir()
    stored = tmp_path / "stored.png"
    stored.write_bytes(b"x" * 10_000)
    files = []
    for i, folder in enumerate([ours, other, cache, ours, cache, other]):
        p = (folder / f"h{i}" if folder == cache else folder) / f"f{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(os.urandom(10_000))
        files.append(p)
    link = other / "linked.png"  # a download linked to a stored image: removing it frees nothing
    os.link(stored, link)
    for i, p in enumerate([link, *files]):
        os.utime(p, (1000 + i, 1000 + i))
    tracked = {str(files[2]), str(files[4])}
    temp = TempFiles([ours, other], max_bytes=35_000, max_files=100)
    temp.blocks = SimpleNamespace(blocks={}, temp_file_sets=[tracked])
    return SimpleNamespace(temp=temp, files=files, link=link, tracked=tracked)


def test_prune_drops_the_least_recently_used_first(three_folders) -> None:
    t = three_folders
    assert t.temp.total_bytes() == 60_000  # the link counts for nothing
    freed = t.temp.prune()
    assert freed == 30_000 and t.temp.total_bytes() == 30_000
    assert [p.exists() for p in t.files] == [False, False, False, True, True, True]
    assert not t.link.exists()  # older than the rest
    assert t.tracked == {str(t.files[4])} and not t.files[2].parent.exists()  # Gradio's entry and folder go too


def test_prune_spares_the_photo_being_edited_and_caps_the_count(three_folders) -> None:
    t = three_folders
    t.temp.prune(keep=[t.files[0]])
    assert [p.exists() for p in t.files] == [True, False, False, False, True, True]
    t.temp.max_bytes, t.temp.max_files = 10**9, 2
    t.temp.prune(keep=[t.files[0]])
    assert [p.exists() for p in t.files] == [True, False, False, False, False, True]


def test_a_preview_handed_out_again_counts_as_just_used(tmp_path) -> None:
    from studio.imaging import PngFiles

    files = PngFiles(tmp_path / "previews")
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    p = files.path(img)
    os.utime(p, (1000, 1000))
    assert files.path(img) == p and os.path.getmtime(p) > 1000
