"""Photo corpus for the image tokenizer and the editing suite.

Build it with::

    python -m training.data.corpus build --out data/corpus

Sources (all redistributable, all reachable without a browser):

* Debian wallpaper packages (``DEBIAN_PACKAGES``), fetched with ``apt-get download`` and unpacked with
  ``dpkg -x`` into ``<out>/../cache/debs`` (or ``--cache``). Nothing is installed. ``--debs DIR`` uses
  ``.deb`` files already on disk instead of downloading.
* ``tuxpaint-stamps-default`` is fetched the same way (not as photos: its cut-outs are the natural
  objects of the object edits, see ``training/edits/objects.py``); ``--no-stamps`` skips it.
* scikit-image's sample photographs bundled inside the wheel (``SKIMAGE_PHOTOS``; never a pooch
  download). They always go to val/test, so a clean CI checkout still has held-out photos.

Photos only — how we decide (``photo_stats`` / ``classify``):

1. Vector formats (SVG) are rejected outright; so are images whose short side is under ``MIN_SHORT``.
2. On a copy downscaled to a short side of 256 px we measure
   * ``colors``: distinct colours after quantising to 5 bits per channel, per 1000 pixels — renders
     and flat art reuse few colours, photos have thousands;
   * ``flat``: fraction of 8×8 luminance blocks with standard deviation < 1.0 (in 0–255) — vector art
     and smooth gradients are flat almost everywhere, photos carry grain and texture even in the sky;
   * ``texture``: median absolute Laplacian of luminance — sensor noise and natural texture;
   * ``chroma``: mean distance of (a, b)-like opponent channels from grey — grayscale photos are
     useless for colour edits and are dropped.
   JPEG sources (the format cameras write) are photos when ``colors >= 5``, ``flat <= 0.3``,
   ``texture >= 1.2`` and ``chroma >= 4``; other raster formats (PNG/WebP — mostly renders here) need
   ``colors >= 25``, ``flat <= 0.3``, ``texture >= 2`` as well.
3. ``EXCLUDE`` / ``INCLUDE`` list what the rule gets wrong, decided by looking at every candidate
   (paintings and digital illustrations with photographic texture, dim low-colour photos).
   ``build`` writes ``decisions.jsonl`` with the statistics and the verdict for every candidate file.
4. KDE wallpaper folders (``contents/images*/``) ship one picture at many resolutions: only the largest
   file of each folder is considered.

Deduplication: exact duplicates by sha256 of the decoded pixels; near-duplicates (the same wallpaper at
several resolutions, light/dark variants) by a 64-bit difference hash of the 9×8 grayscale thumbnail,
Hamming distance ≤ 6 — the largest original is kept.

Each kept photo is stored downscaled to a short side of ``SHORT_SIDE`` (256) px as
``images/<id>.png``; ``manifest.jsonl`` has one line per photo::

    {"id","file","split","source","package","license","orig_path","width","height","sha256"}

Splits are by source photo (train / val / test ≈ 70 / 15 / 15), from a seeded permutation of the
Debian photos sorted by id; the scikit-image photos alternate between val and test. Every crop of a
photo therefore belongs to that photo's split.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_PACKAGES: tuple[str, ...] = (
    "gnome-backgrounds",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "mate-backgrounds",
    "ukui-wallpapers",
    "plasma-workspace-wallpapers",
    "lomiri-wallpapers",
)

# skimage.data files shipped in the wheel that are colour photographs, with their licenses
# (from the skimage.data docstrings).
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut.png": "public-domain (NASA)",
    "chelsea.png": "CC0-1.0 (Stefan van der Walt)",
    "coffee.png": "CC0-1.0 (Rachel Michetti)",
    "rocket.jpg": "public-domain (SpaceX, CC0)",
}

# Licenses for packages whose copyright file is not machine-readable (DEP-5) or whose image files
# are not listed individually.
PACKAGE_LICENSE_FALLBACK: dict[str, str] = {
    "gnome-backgrounds": "CC-BY-SA-3.0 (see usr/share/doc/gnome-backgrounds/copyright)",
    "plasma-workspace-wallpapers": "LGPL-3/CC-BY-SA (see usr/share/doc/plasma-workspace-wallpapers/copyright)",
}

STAMPS_PACKAGE = "tuxpaint-stamps-default"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".svg"}
MIN_SHORT = 300          # smaller originals are previews/thumbnails
SHORT_SIDE = 256         # stored size: a 128²-area crop then looks like a whole photo
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)

# Hand corrections to the heuristic, matched against "package/basename" with fnmatch.
# Filled in after looking at every candidate (see decisions.jsonl of a build).
# Keys look like "mate-backgrounds/usr/share/backgrounds/mate/nature/Storm.jpg".
EXCLUDE: tuple[str, ...] = (
    "mate-backgrounds/*/Elephants*",            # a painting
    "plasma-workspace-wallpapers/*/Honeywave/*",  # digital illustrations with grain
    "plasma-workspace-wallpapers/*/Shell/*",
    "plasma-workspace-wallpapers/*/Autumn/*",
    "plasma-workspace-wallpapers/*/SafeLanding/*",
    "ukui-wallpapers/*/string.jpg",             # rendered ribbons
    "ukui-wallpapers/*/rhythm.jpg",
    "lomiri-wallpapers-*/analogpattern_by_Peter_Nerlich.jpg",  # abstract noise pattern
    "lomiri-wallpapers-*/greentock_by_Peter_Nerlich.jpg",      # rendered clock
    "gnome-backgrounds/*/licorice-*",           # rendered pattern
)
INCLUDE: tuple[str, ...] = (
    "mate-backgrounds/*/nature/Storm.jpg",      # dim, few colours, but a photograph
    "mate-backgrounds/*/nature/Blinds.jpg",     # green leaf close-up
)


# ----------------------------------------------------------------------------- fetching


def fetch_packages(cache: Path, packages: Sequence[str] = DEBIAN_PACKAGES,
                   debs_dir: Path | None = None) -> dict[str, Path]:
    """Download (``apt-get download``) and unpack (``dpkg -x``) each package; returns pkg -> root."""
    deb_cache = cache / "debs"
    unpack = cache / "unpacked"
    deb_cache.mkdir(parents=True, exist_ok=True)
    unpack.mkdir(parents=True, exist_ok=True)
    roots: dict[str, Path] = {}
    for pkg in packages:
        root = unpack / pkg
        if (root / ".done").exists():
            roots[pkg] = root
            continue
        debs = _find_deb(deb_cache, pkg) or (_find_deb(debs_dir, pkg) if debs_dir else None)
        if debs is None:
            print(f"[corpus] apt-get download {pkg}", file=sys.stderr)
            r = subprocess.run(["apt-get", "download", pkg], cwd=deb_cache, capture_output=True, text=True)
            debs = _find_deb(deb_cache, pkg)
            if debs is None:
                print(f"[corpus] WARNING: could not download {pkg}: {r.stderr.strip()[-300:]}", file=sys.stderr)
                continue
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(debs), str(root)], check=True)
        (root / ".done").write_text(debs.name)
        roots[pkg] = root
    return roots


def _find_deb(folder: Path | None, pkg: str) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    for f in sorted(folder.glob("*.deb")):
        if f.name.split("_")[0] == pkg:
            return f
    return None


# ----------------------------------------------------------------------------- licenses


def parse_dep5(text: str) -> list[tuple[list[str], str]]:
    """(file patterns, license short name) per ``Files:`` stanza of a DEP-5 copyright file."""
    out: list[tuple[list[str], str]] = []
    for stanza in re.split(r"\n\s*\n", text):
        files: list[str] = []
        lic = None
        cur = None
        for line in stanza.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                cur = m.group(1).lower()
                if cur == "files":
                    files.extend(m.group(2).split())
                elif cur == "license":
                    lic = m.group(2).strip()
            elif cur == "files" and line.startswith((" ", "\t")):
                files.extend(line.split())
        if files and lic:
            out.append((files, lic))
    return out


def license_for(pkg: str, root: Path, rel: str) -> str:
    """Best license string for one installed file: the last matching DEP-5 stanza (DEP-5 semantics),
    matching either the full pattern or its basename (upstream paths differ from installed ones)."""
    cp = root / "usr/share/doc" / pkg / "copyright"
    best = None
    if cp.exists():
        name = os.path.basename(rel)
        for pats, lic in parse_dep5(cp.read_text(errors="replace")):
            for p in pats:
                if p == "*":
                    best = best or lic
                elif p.startswith("debian/") or os.path.basename(p) in ("*", ""):
                    continue
                elif fnmatch.fnmatch(rel, "*/" + p) or fnmatch.fnmatch(name, os.path.basename(p)):
                    best = lic
    kde = _kde_metadata(root, rel)
    if kde:
        return kde
    return best or PACKAGE_LICENSE_FALLBACK.get(pkg, "see copyright file")


def _kde_metadata(root: Path, rel: str) -> str | None:
    """License + author from a KDE wallpaper's metadata.json (…/<Name>/contents/images/x.jpg)."""
    parts = Path(rel).parts
    if "contents" not in parts:
        return None
    meta = root.joinpath(*parts[: parts.index("contents")]) / "metadata.json"
    if not meta.exists():
        return None
    kp = json.loads(meta.read_text()).get("KPlugin", {})
    authors = ", ".join(a.get("Name", "") for a in kp.get("Authors", []))
    return f"{kp.get('License', 'GPL-2+')} ({authors})" if authors else kp.get("License", "GPL-2+")


# ----------------------------------------------------------------------------- photo heuristic


@dataclass
class Candidate:
    source: str      # "debian" | "skimage"
    package: str
    path: Path       # file on disk
    orig_path: str   # path inside the package / wheel
    license: str


def photo_stats(img: Image.Image) -> dict[str, float]:
    """Statistics used to tell photographs from renders/vector art (see the module docstring)."""
    small = downscale_short(img.convert("RGB"), SHORT_SIDE)
    a = np.asarray(small, dtype=np.uint8)
    q = (a >> 3).astype(np.int32)
    codes = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    colors = len(np.unique(codes)) / (codes.size / 1000.0)
    y = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
    flat = float((blocks.std(axis=1) < 1.0).mean())
    lap = np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
    texture = float(np.median(lap))
    f = a.astype(np.float32)
    rg = f[..., 0] - f[..., 1]
    yb = 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
    chroma = float(np.sqrt(rg**2 + yb**2).mean())
    return {"colors": round(colors, 2), "flat": round(flat, 4), "texture": round(texture, 3),
            "chroma": round(chroma, 2)}


def classify(stats: dict[str, float], is_jpeg: bool) -> bool:
    """The photo rule of the module docstring (before the hand-made EXCLUDE/INCLUDE lists)."""
    if stats["chroma"] < 4:
        return False
    if is_jpeg:
        return stats["colors"] >= 5 and stats["flat"] <= 0.3 and stats["texture"] >= 1.2
    return stats["colors"] >= 25 and stats["flat"] <= 0.3 and stats["texture"] >= 2.0


def dhash(img: Image.Image) -> int:
    g = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int32)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def downscale_short(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    s = short / min(w, h)
    if s >= 1:
        return img.copy()
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------- candidates


def debian_candidates(roots: dict[str, Path]) -> list[Candidate]:
    out = []
    for pkg, root in sorted(roots.items()):
        for f in sorted(root.rglob("*")):
            if not f.is_file() or f.suffix.lower() not in IMAGE_EXTS:
                continue
            rel = str(f.relative_to(root))
            if "/icons/" in rel or "/doc/" in rel:
                continue
            out.append(Candidate("debian", pkg, f, rel, license_for(pkg, root, rel)))
    return out


def skimage_candidates() -> list[Candidate]:
    import skimage

    d = Path(skimage.__file__).parent / "data"
    out = []
    for name, lic in SKIMAGE_PHOTOS.items():
        f = d / name
        if f.exists():
            out.append(Candidate("skimage", f"scikit-image-{skimage.__version__}", f, f"skimage/data/{name}", lic))
    return out


def _matches(pats: Iterable[str], c: Candidate) -> bool:
    key = f"{c.package}/{c.orig_path}"
    return any(fnmatch.fnmatch(key, p) for p in pats)


def _largest_per_kde_folder(cands: list[Candidate]) -> tuple[list[Candidate], list[dict]]:
    """KDE wallpaper folders hold one picture at many resolutions: keep the largest file of each."""
    best: dict[tuple[str, str], Candidate] = {}
    out, skipped = [], []
    for c in cands:
        parent = os.path.dirname(c.orig_path)
        if os.path.basename(parent).startswith("images") and "/contents/" in c.orig_path:
            k = (c.package, parent)
            if k not in best or c.path.stat().st_size > best[k].path.stat().st_size:
                best[k] = c
        else:
            out.append(c)
    chosen = set(id(c) for c in best.values())
    for c in cands:
        if id(c) not in chosen and c not in out:
            skipped.append({"package": c.package, "orig_path": c.orig_path, "kept": False,
                            "reason": "smaller rendition in a KDE wallpaper folder"})
    return out + list(best.values()), skipped


# ----------------------------------------------------------------------------- build


def build(out: Path, cache: Path | None = None, seed: int = 0, packages: Sequence[str] = DEBIAN_PACKAGES,
          debs_dir: Path | None = None, use_skimage: bool = True,
          extra_candidates: Sequence[Candidate] = (), with_stamps: bool = False) -> list[dict]:
    """Build the corpus under ``out``; returns the manifest rows."""
    out = Path(out)
    cache = Path(cache) if cache else out.parent / "cache"
    roots = fetch_packages(cache, packages, debs_dir) if packages else {}
    if with_stamps:
        # not photos: the cut-outs that object edits paste (see training/edits/objects.py)
        fetch_packages(cache, (STAMPS_PACKAGE,), debs_dir)
    cands = debian_candidates(roots) + list(extra_candidates)
    if use_skimage:
        cands += skimage_candidates()

    cands, decisions = _largest_per_kde_folder(cands)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kept: list[tuple[Candidate, Image.Image, str, int]] = []  # cand, image, sha, dhash
    for c in cands:
        dec = {"package": c.package, "orig_path": c.orig_path}
        try:
            if c.path.suffix.lower() == ".svg":
                raise ValueError("vector graphics")
            with Image.open(c.path) as im:
                im.load()
                img = im.convert("RGB")
        except Exception as e:  # unreadable or vector: recorded, not fatal
            dec.update(kept=False, reason=f"unreadable: {e}" if "vector" not in str(e) else "vector (svg)")
            decisions.append(dec)
            continue
        w, h = img.size
        stats = photo_stats(img)
        dec.update(stats, width=w, height=h)
        is_photo = classify(stats, c.path.suffix.lower() in (".jpg", ".jpeg"))
        reason = "photo heuristic" if is_photo else "not a photo (heuristic)"
        if c.source == "skimage":
            is_photo, reason = True, "curated skimage photo"
        if _matches(EXCLUDE, c):
            is_photo, reason = False, "EXCLUDE list"
        elif _matches(INCLUDE, c):
            is_photo, reason = True, "INCLUDE list"
        if min(w, h) < MIN_SHORT:
            is_photo, reason = False, f"too small (short side {min(w, h)} < {MIN_SHORT})"
        dec.update(kept=is_photo, reason=reason)
        decisions.append(dec)
        if is_photo:
            kept.append((c, img, hashlib.sha256(img.tobytes()).hexdigest(), dhash(img)))

    # dedup: exact pixels, then near-duplicates (largest kept; skimage ones always win so CI has them)
    kept.sort(key=lambda t: (t[0].source != "skimage", -(t[1].size[0] * t[1].size[1]), t[0].orig_path))
    uniq: list[tuple[Candidate, Image.Image, str, int]] = []
    for t in kept:
        dup = next((u for u in uniq if u[2] == t[2] or bin(u[3] ^ t[3]).count("1") <= 6), None)
        if dup is not None:
            for d in decisions:
                if d["orig_path"] == t[0].orig_path and d["package"] == t[0].package:
                    d.update(kept=False, reason=f"duplicate of {dup[0].package}/{dup[0].orig_path}")
            continue
        uniq.append(t)

    rows = []
    for c, img, sha, _ in uniq:
        parts = Path(c.orig_path).parts
        name = parts[parts.index("contents") - 1] if "contents" in parts else Path(c.orig_path).stem
        stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        pid = f"{'sk' if c.source == 'skimage' else 'deb'}-{stem}-{sha[:8]}"
        small = downscale_short(img, SHORT_SIDE)
        rel = f"images/{pid}.png"
        small.save(out / rel, optimize=True)
        rows.append({"id": pid, "file": rel, "split": "", "source": c.source, "package": c.package,
                     "license": c.license, "orig_path": c.orig_path, "width": small.size[0],
                     "height": small.size[1], "sha256": sha})
    assign_splits(rows, seed)
    rows.sort(key=lambda r: r["id"])
    with open(out / "manifest.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out / "decisions.jsonl", "w") as f:
        for d in decisions:
            f.write(json.dumps(d) + "\n")
    # stale images from an earlier build would confuse anyone globbing the folder
    keep = {r["file"] for r in rows}
    for p in (out / "images").glob("*.png"):
        if f"images/{p.name}" not in keep:
            p.unlink()
    return rows


def assign_splits(rows: list[dict], seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS) -> None:
    """Split by source photo. scikit-image photos alternate val/test; the rest by a seeded permutation."""
    sk = sorted((r for r in rows if r["source"] == "skimage"), key=lambda r: r["id"])
    for i, r in enumerate(sk):
        r["split"] = "test" if i % 2 == 0 else "val"
    rest = sorted((r for r in rows if r["source"] != "skimage"), key=lambda r: r["id"])
    order = np.random.default_rng(seed).permutation(len(rest))
    n = len(rest)
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    for rank, idx in enumerate(order):
        rest[idx]["split"] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"


# ----------------------------------------------------------------------------- loading


def load_manifest(root: str | Path) -> list[dict]:
    root = Path(root)
    mf = root / "manifest.jsonl"
    if not mf.exists():
        raise FileNotFoundError(f"{mf} not found — build it with `python -m training.data.corpus build --out {root}`")
    with open(mf) as f:
        return [json.loads(line) for line in f if line.strip()]


class LazyPhoto:
    """A manifest row whose image is read on first use (``.image``)."""

    def __init__(self, root: Path, row: dict):
        self.root, self.row = root, row
        self._img: Image.Image | None = None

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def image(self) -> Image.Image:
        if self._img is None:
            with Image.open(self.root / self.row["file"]) as im:
                self._img = im.convert("RGB")
        return self._img


def photos(root: str | Path, split: str | None = None, lazy: bool = False) -> list:
    """Photos of one split (``None`` = all), as PIL images or, with ``lazy=True``, ``LazyPhoto``s."""
    root = Path(root)
    rows = [r for r in load_manifest(root) if split is None or r["split"] == split]
    items = [LazyPhoto(root, r) for r in rows]
    return items if lazy else [p.image for p in items]


def skimage_photos() -> list[Image.Image]:
    """The bundled scikit-image photographs (always available, even in CI)."""
    return [Image.open(c.path).convert("RGB") for c in skimage_candidates()]


def snap_size(aspect: float, area: int, factor: int = 8) -> tuple[int, int]:
    """(w, h) with w/h ≈ aspect, w·h ≈ area, both multiples of ``factor``."""
    w = max(factor, round((area * aspect) ** 0.5 / factor) * factor)
    h = max(factor, round((area / aspect) ** 0.5 / factor) * factor)
    return w, h


def random_crop(img: Image.Image, rng: np.random.Generator, out_area: int = 128 * 128,
                scales: Sequence[float] = (0.45, 0.6, 0.8, 1.0),
                aspects: Sequence[float] = (1.0, 1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3),
                factor: int = 8) -> Image.Image:
    """A random crop resized to ≈ ``out_area`` pixels (sides multiples of ``factor``).

    ``aspects`` are output w/h ratios; ``scales`` are the crop's linear size relative to the largest
    crop of that aspect that fits in the photo. Only ``rng`` draws, so a seeded Generator reproduces it.
    """
    aspect = float(aspects[int(rng.integers(len(aspects)))])
    scale = float(scales[int(rng.integers(len(scales)))])
    W, H = img.size
    cw_max = min(W, H * aspect)
    cw = max(8.0, cw_max * scale)
    ch = cw / aspect
    x0 = float(rng.uniform(0, max(0.0, W - cw)))
    y0 = float(rng.uniform(0, max(0.0, H - ch)))
    ow, oh = snap_size(aspect, out_area, factor)
    return img.resize((ow, oh), Image.Resampling.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.data.corpus", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download/unpack sources and build the corpus")
    b.add_argument("--out", default="data/corpus")
    b.add_argument("--cache", default=None, help="where .debs are downloaded/unpacked (default <out>/../cache)")
    b.add_argument("--debs", default=None, help="use .deb files from this folder before downloading")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--packages", nargs="*", default=list(DEBIAN_PACKAGES))
    b.add_argument("--no-skimage", action="store_true")
    b.add_argument("--no-stamps", action="store_true", help=f"don't fetch {STAMPS_PACKAGE} (object cut-outs)")
    s = sub.add_parser("stats", help="print split sizes of a built corpus")
    s.add_argument("--root", default="data/corpus")
    r = sub.add_parser("report", help="markdown list of kept/rejected files")
    r.add_argument("--root", default="data/corpus")
    r.add_argument("-o", "--out", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        rows = build(Path(a.out), Path(a.cache) if a.cache else None, a.seed, a.packages,
                     Path(a.debs) if a.debs else None, not a.no_skimage, with_stamps=not a.no_stamps)
        _print_stats(rows)
        print(f"wrote {Path(a.out) / 'manifest.jsonl'}; per-file verdicts in {Path(a.out) / 'decisions.jsonl'}")
    elif a.cmd == "report":
        text = report(a.root)
        if a.out:
            Path(a.out).write_text(text)
        else:
            print(text)
    else:
        _print_stats(load_manifest(a.root))
    return 0


def report(root: str | Path) -> str:
    """Markdown: every kept photo (split, package, license) and every rejected file with the reason."""
    root = Path(root)
    rows = load_manifest(root)
    out = ["# Photo corpus: kept and rejected files", "",
           f"Generated by `python -m training.data.corpus report --root {root}` from `manifest.jsonl` and "
           "`decisions.jsonl`.", "", f"## Kept ({len(rows)})", "",
           "| id | split | package | license | original path |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["split"], r["id"])):
        out.append(f"| {r['id']} | {r['split']} | {r['package']} | {r['license']} | {r['orig_path']} |")
    dec = [json.loads(x) for x in (root / "decisions.jsonl").read_text().splitlines() if x.strip()]
    rej = [d for d in dec if not d["kept"] and not d["reason"].startswith("smaller rendition")]
    out += ["", f"## Rejected ({len(rej)}; smaller renditions in KDE wallpaper folders not listed)", "",
            "| package | file | reason | colors | flat | texture | chroma |", "|---|---|---|---|---|---|---|"]
    for d in sorted(rej, key=lambda d: (d["package"], d["orig_path"])):
        out.append(f"| {d['package']} | {d['orig_path']} | {d['reason']} | {d.get('colors', '')} | "
                   f"{d.get('flat', '')} | {d.get('texture', '')} | {d.get('chroma', '')} |")
    return "\n".join(out) + "\n"


def _print_stats(rows: list[dict]) -> None:
    for sp in ("train", "val", "test"):
        n = sum(r["split"] == sp for r in rows)
        print(f"{sp:6s} {n:4d}")


if __name__ == "__main__":
    raise SystemExit(main())
