"""Photo corpus: photo heuristic, dedup, split by source photo, determinism, crops.

Runs on a clean checkout: builds a tiny corpus in tmp_path from scikit-image's bundled photos (no
Debian download) plus JPEG crops of another bundled photo standing in for wallpaper files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from training.data import corpus


def _extra_candidates(folder: Path) -> list[corpus.Candidate]:
    """Six distinct photographic JPEGs (crops of skimage's motorcycle photo) + one near-duplicate."""
    src = Image.open(Path(skimage.__file__).parent / "data" / "motorcycle_left.png").convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    cands = []
    boxes = [(0, 0), (130, 0), (260, 0), (380, 0), (0, 190), (380, 190)]
    for i, (x, y) in enumerate(boxes):
        p = folder / f"photo{i}.jpg"
        src.crop((x, y, x + 360, y + 310)).save(p, quality=92)
        cands.append(corpus.Candidate("local", "test-pkg", p, f"photos/photo{i}.jpg", "CC0-1.0"))
    dup = folder / "photo0_big.jpg"
    Image.open(folder / "photo0.jpg").resize((720, 620), Image.Resampling.LANCZOS).save(dup, quality=92)
    cands.append(corpus.Candidate("local", "test-pkg", dup, "photos/photo0_big.jpg", "CC0-1.0"))
    # a flat rendered gradient: not a photo
    flat = folder / "gradient.png"
    g = np.linspace(0, 255, 400, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(g, (320, 1))] * 3, axis=2)).save(flat)
    cands.append(corpus.Candidate("local", "test-pkg", flat, "photos/gradient.png", "CC0-1.0"))
    svg = folder / "art.svg"
    svg.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    cands.append(corpus.Candidate("local", "test-pkg", svg, "photos/art.svg", "CC0-1.0"))
    return cands


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, list[corpus.Candidate]]:
    base = tmp_path_factory.mktemp("corpus")
    cands = _extra_candidates(base / "src")
    corpus.build(base / "c", packages=(), extra_candidates=cands, seed=0)
    return base, cands


def test_manifest_fields_and_images(tiny):
    base, _ = tiny
    rows = corpus.load_manifest(base / "c")
    assert {r["source"] for r in rows} == {"skimage", "local"}
    for r in rows:
        assert set(r) >= {"id", "file", "split", "source", "package", "license", "orig_path", "width", "height", "sha256"}
        with Image.open(base / "c" / r["file"]) as im:
            assert im.size == (r["width"], r["height"])
            assert min(im.size) == corpus.SHORT_SIDE


def test_heuristic_dedup_and_decisions(tiny):
    base, _ = tiny
    dec = {d["orig_path"]: d for d in map(json.loads, (base / "c" / "decisions.jsonl").read_text().splitlines())}
    assert dec["photos/gradient.png"]["kept"] is False
    assert dec["photos/art.svg"]["kept"] is False
    # the two sizes of photo0 are one photo: the larger is kept, the other marked as a duplicate
    assert dec["photos/photo0_big.jpg"]["kept"] is True
    assert dec["photos/photo0.jpg"]["reason"].startswith("duplicate of")
    kept_local = [d for d in dec.values() if d["kept"] and d["orig_path"].startswith("photos/")]
    assert len(kept_local) == 6


def test_split_by_source_photo(tiny):
    base, _ = tiny
    rows = corpus.load_manifest(base / "c")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    by_split: dict[str, set] = {}
    for r in rows:
        assert r["split"] in ("train", "val", "test")
        by_split.setdefault(r["split"], set()).add(r["sha256"])
    # no photo (by content) in two splits
    splits = list(by_split.values())
    for i in range(len(splits)):
        for j in range(i + 1, len(splits)):
            assert not (splits[i] & splits[j])
    assert all(r["split"] in ("val", "test") for r in rows if r["source"] == "skimage")
    assert "train" in by_split and len(by_split["train"]) >= 3


def test_build_is_deterministic(tiny, tmp_path):
    base, cands = tiny
    corpus.build(tmp_path / "again", packages=(), extra_candidates=cands, seed=0)
    a = (base / "c" / "manifest.jsonl").read_text()
    b = (tmp_path / "again" / "manifest.jsonl").read_text()
    assert a == b
    rows = corpus.load_manifest(tmp_path / "again")
    corpus.assign_splits(rows, seed=5)
    other = {r["id"]: r["split"] for r in rows}
    corpus.assign_splits(rows, seed=5)
    assert other == {r["id"]: r["split"] for r in rows}


def test_photos_loader(tiny):
    base, _ = tiny
    test = corpus.photos(base / "c", "test")
    assert test and all(isinstance(p, Image.Image) and p.mode == "RGB" for p in test)
    lazy = corpus.photos(base / "c", "val", lazy=True)
    assert lazy[0].image.size == (lazy[0].row["width"], lazy[0].row["height"])


def test_load_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="training.data.corpus build"):
        corpus.load_manifest(tmp_path)


def test_random_crop_reproducible_and_sized():
    img = corpus.skimage_photos()[0]
    a = [corpus.random_crop(img, np.random.default_rng(3)) for _ in range(2)]
    assert a[0].tobytes() == a[1].tobytes()
    sizes = {corpus.random_crop(img, np.random.default_rng(s)).size for s in range(40)}
    assert len(sizes) >= 3  # several aspect ratios
    for w, h in sizes:
        assert w % 8 == 0 and h % 8 == 0
        assert abs(w * h - 128 * 128) / (128 * 128) < 0.15


def test_report_lists_kept_and_rejected(tiny):
    base, _ = tiny
    text = corpus.report(base / "c")
    for r in corpus.load_manifest(base / "c"):
        assert r["id"] in text
    assert "photos/gradient.png" in text and "not a photo" in text
