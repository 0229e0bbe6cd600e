"""``feedback.record.record_edit`` with the real engine, and exports the store reads back."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from feedback.record import bundle_id, record_edit
from feedback.store import Store


def test_record_edit_stores_what_the_engine_made(tmp_path: Path, tiny_bundle) -> None:
    from engine.api import edit_blocking

    src = Image.new("RGB", (64, 64), (90, 120, 200))
    done = edit_blocking(tiny_bundle, src, "make it grey", n=2, seed=11, preview_every=0)
    settings = {"think": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "mine": "kept"}
    with Store(tmp_path) as store:
        (root,) = record_edit(store, tiny_bundle, src, "make it grey", done[:1], settings)
        ids = record_edit(store, tiny_bundle, src, "make it grey", done, settings, parent_id=root, rater="ann",
                          edit_uid="e1", extra_timings={"studio_total": 2.5})
        cands = store.candidates(ids)
        assert [c.seed for c in cands] == [11, 12] and [c.idx for c in cands] == [0, 1]
        for c, d in zip(cands, done, strict=True):
            assert c.tokens == list(d.tokens) and c.logprobs == list(d.logprobs)
            assert (c.grid_h, c.grid_w) == d.grid.shape and store.load_image(c.output_hash).tobytes() == d.image.tobytes()
            assert c.timings == {**d.timings, "studio_total": 2.5}
        c = cands[0]
        assert c.bundle_id == bundle_id(tiny_bundle) == f"{tiny_bundle.config.name}@{tiny_bundle.config.version}"
        assert c.weights_hash == tiny_bundle.weights_hash() and c.settings["mine"] == "kept"
        assert c.parent_id == root and c.rater == "ann" and c.edit_uid == "e1"
        assert store.load_image(c.source_hash).tobytes() == src.tobytes()


def test_record_edit_keeps_the_photo_and_the_result_at_full_size(tmp_path: Path, tiny_bundle) -> None:
    """A photo larger than the model's picture: the model's input and output are stored for training, the
    photo and each candidate's full-resolution render next to them, losslessly, with its provenance."""
    from engine.api import edit_blocking
    from engine.image_io import fit_to_area

    photo = Image.effect_mandelbrot((160, 96), (-2.0, -1.0, 1.0, 1.0), 60).convert("RGB")
    done = edit_blocking(tiny_bundle, photo, "make it grey", n=2, seed=5, preview_every=0)
    source = fit_to_area(photo, tiny_bundle.config.image_area, tiny_bundle.config.spatial_factor)
    with Store(tmp_path) as store:
        ids = record_edit(store, tiny_bundle, source, "make it grey", done, {"think": False, "temperature": 1.0,
                          "top_k": 0, "top_p": 1.0}, original=photo)
        for c, d in zip(store.candidates(ids), done, strict=True):
            assert d.full is not None and d.full.size == (160, 96) and d.image.size == source.size
            assert store.load_image(c.full_hash).tobytes() == d.full.tobytes()
            assert store.load_image(c.output_hash).tobytes() == d.image.tobytes()
            assert store.load_image(c.original_hash).tobytes() == photo.tobytes()
            assert store.load_image(c.source_hash).tobytes() == source.tobytes()
            assert c.render and c.render.get("method") == d.render.get("method")


def test_an_export_written_as_parquet_imports(tmp_path: Path, tiny_bundle) -> None:
    """Exports made before they were saved splits held parquet files; they still import."""
    from engine.api import edit_blocking

    src = Image.new("RGB", (64, 64), (10, 20, 30))
    done = edit_blocking(tiny_bundle, src, "flip it", n=2, seed=3, preview_every=0)
    with Store(tmp_path / "a") as a:
        x, y = record_edit(a, tiny_bundle, src, "flip it", done, {"think": False, "temperature": 1.0, "top_k": 0,
                                                                  "top_p": 1.0})
        a.add_rating("ann", "pair", "B", [x, y])
        out = a.export_dataset(tmp_path / "export")
    legacy = tmp_path / "legacy"
    for part in ("candidates", "ratings"):
        (legacy / part).mkdir(parents=True)
        (arrow,) = (out / part).glob("*.arrow")
        with pa.memory_map(str(arrow)) as f:
            pq.write_table(pa.ipc.open_stream(f).read_all(), legacy / part / "train-00000-of-00001.parquet")
    with Store(tmp_path / "b") as b:
        assert b.import_dataset(legacy) == {"candidates": 2, "ratings": 1}
        (pair,) = b.preference_pairs()
        assert pair.chosen.tokens == list(done[1].tokens)


def test_the_command_line_exports_and_imports(tmp_path: Path, tiny_bundle, capsys) -> None:
    import datasets

    from engine.api import edit_blocking
    from feedback.__main__ import main

    src = Image.new("RGB", (64, 64), (200, 20, 30))
    done = edit_blocking(tiny_bundle, src, "make it blue", n=2, seed=5, preview_every=0)
    with Store(tmp_path / "a") as a:
        x, y = record_edit(a, tiny_bundle, src, "make it blue", done, {"think": False, "temperature": 1.0,
                                                                       "top_k": 0, "top_p": 1.0})
        a.add_rating("ann", "thumb", "up", [x])
    main(["export", str(tmp_path / "out"), "--data", str(tmp_path / "a")])
    printed = capsys.readouterr().out
    assert "exported 2 candidates and 1 ratings" in printed and "load_from_disk" in printed, printed
    assert datasets.load_from_disk(str(tmp_path / "out"))["candidates"].num_rows == 2
    main(["import", str(tmp_path / "out"), "--data", str(tmp_path / "b")])
    assert "imported 2 candidates and 1 ratings" in capsys.readouterr().out
