"""``python -m engine edit`` end to end on a tiny random bundle written to tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from engine.tiny import make_tiny_random_bundle

    path = tmp_path_factory.mktemp("cli") / "tiny"
    make_tiny_random_bundle(path, seed=1)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    y, x = np.mgrid[0:80, 0:80]
    p = tmp_path_factory.mktemp("img") / "in.jpg"
    Image.fromarray(np.stack([x * 3, y * 3, 255 - x * 3], -1).astype(np.uint8)).save(p)
    return p


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_edit_end_to_end(bundle_dir, photo, tmp_path):
    out = tmp_path / "out.png"
    r = _run("edit", "--bundle", str(bundle_dir), "--image", str(photo), "Make the photo grayscale.",
             "-o", str(out), "--seed", "5", "--n", "2", "--think", "--max-new-tokens", "110")
    assert r.returncode == 0, r.stderr
    for p in (out, tmp_path / "out_1.png"):
        im = Image.open(p)
        assert im.format == "PNG" and im.size == (80, 80)  # the photo's own size (engine.render)
    assert "rows" in r.stderr and "16/16" in r.stderr  # tqdm bar over 2 x 8 rows
    assert "seed 5" in r.stdout + r.stderr and "seed 6" in r.stdout + r.stderr
    # same seed, same picture (in process this time: importing torch twice is slow)
    from engine.__main__ import main

    again = tmp_path / "again.png"
    assert main(["edit", "--bundle", str(bundle_dir), "--image", str(photo), "Make the photo grayscale.",
                 "-o", str(again), "--seed", "5", "--think", "--max-new-tokens", "110"]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    raw = tmp_path / "raw.png"
    assert main(["edit", "--bundle", str(bundle_dir), "--image", str(photo), "Make the photo grayscale.",
                 "-o", str(raw), "--seed", "5", "--think", "--max-new-tokens", "110", "--raw"]) == 0
    assert Image.open(raw).size == (64, 64)  # the model's own output


def test_cli_errors_are_clear(bundle_dir, photo, tmp_path, monkeypatch, capsys):
    import engine.bundle
    from engine.__main__ import main

    monkeypatch.setattr(engine.bundle, "default_bundle_path", lambda: tmp_path / "assets" / "earl-nano")
    assert main(["edit", "--image", str(photo), "x", "-o", str(tmp_path / "o.png")]) == 2
    assert "default EARL-nano bundle is not at" in capsys.readouterr().err

    assert main(["edit", "--bundle", str(tmp_path / "nope"), "--image", str(photo), "x", "-o",
                 str(tmp_path / "o.png")]) == 2
    assert main(["edit", "--bundle", str(bundle_dir), "--image", str(tmp_path / "missing.jpg"), "x", "-o",
                 str(tmp_path / "o.png")]) == 2
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["edit", "--bundle", str(bundle_dir), "--image", str(bad), "x", "-o", str(tmp_path / "o.png")]) == 2
    assert main(["edit", "--bundle", str(bundle_dir), "--image", str(photo), "  ", "-o", str(tmp_path / "o.png")]) == 1


def test_cli_writes_portrait_candidates_of_a_landscape_photo(bundle_dir, tmp_path, capsys):
    from engine.__main__ import main

    y, x = np.mgrid[0:60, 0:90]
    photo = tmp_path / "wide.png"
    Image.fromarray(np.stack([x * 2, y * 4, 255 - x * 2], -1).astype(np.uint8)).save(photo)
    out = tmp_path / "turn.png"
    args = ["edit", "--bundle", str(bundle_dir), "--image", str(photo), "Turn the picture upside down.",
            "-o", str(out), "--seed", "0", "--n", "4"]
    assert main(args + ["--transpose"]) == 0
    sizes = [Image.open(p).size for p in [out] + [tmp_path / f"turn_{i}.png" for i in range(1, 4)]]
    # the random model turns some candidates (its noise renders as the upsampled output, turned as drawn)
    assert {w > h for w, h in sizes} == {True, False}
    assert "37/37" in capsys.readouterr().err  # the rows bar counts a turned candidate's 10 rows, not 7
    assert main(args + ["--no-transpose", "--raw"]) == 0
    assert {Image.open(p).size for p in [out] + [tmp_path / f"turn_{i}.png" for i in range(1, 4)]} == {(80, 56)}
