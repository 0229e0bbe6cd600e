"""Stored images removed or truncated under the store (by hand, by disk trouble): the page shows a
placeholder, the export goes on and lists what it skipped, and ``python -m feedback.store check`` reports
them and prunes them (keeping the pruned rows in a backup file)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from feedback.store import CHECK_COMMAND, Store, StoreError
from tests.faults.conftest import add_edit, confirmed, rate_all, run_py


@pytest.fixture
def damaged(tmp_path):
    """A store of 4 rated edits, then one output image deleted and one source image truncated."""
    rng = np.random.default_rng(4)
    store = Store(tmp_path / "data")
    edits = []
    for _ in range(4):
        ids = add_edit(store, rng)
        rate_all(store, ids)
        edits.append(ids)
    before = confirmed(store)
    gone = store.candidate(edits[0][1])  # its output file is deleted
    cut = store.candidate(edits[2][0])  # its source file (shared by edit 2's candidates) is truncated
    store.image_path(gone.output_hash).unlink()
    p = store.image_path(cut.source_hash)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    affected = {gone.id, *edits[2]}
    affected_ratings = {r.id for r in store.ratings() if set(r.candidate_ids) & affected}
    return SimpleNamespace(store=store, edits=edits, before=before, gone=gone, cut=cut, affected=affected,
                           affected_ratings=affected_ratings)


def test_export_goes_on_and_lists_what_it_skipped(damaged, tmp_path, report):
    from feedback.export import read_skipped

    store = damaged.store
    out = store.export_dataset(tmp_path / "export")
    skipped = read_skipped(out)
    assert {s["id"] for s in skipped if s["kind"] == "candidate"} == damaged.affected
    assert {s["id"] for s in skipped if s["kind"] == "rating"} == damaged.affected_ratings
    whys = " ".join(s["why"] for s in skipped)
    assert "missing" in whys and "damaged" in whys
    # what was exported is whole: it imports into a fresh store, every kept rating intact
    fresh = Store(tmp_path / "fresh")
    got = fresh.import_dataset(out)
    n_c, n_r = len(damaged.before["candidates"]), len(damaged.before["ratings"])
    assert got == {"candidates": n_c - len(damaged.affected), "ratings": n_r - len(damaged.affected_ratings)}
    assert fresh.integrity_check() == "ok"
    report("Stored image files deleted / truncated, then the dataset is exported",
           f"export goes on; skipped.json lists {len(skipped)} rows, e.g. “{skipped[0]['why']}”",
           f"{got['candidates']} of {n_c} candidates and {got['ratings']} of {n_r} ratings exported (the others "
           "depend on a lost image); the store itself untouched",
           exported_candidates=got["candidates"], exported_ratings=got["ratings"],
           skipped_candidates=len(damaged.affected), skipped_ratings=len(damaged.affected_ratings))


def test_page_shows_a_placeholder(damaged):
    from studio.app import StudioContext, _panel_updates, export_message
    from studio.models import ModelRegistry

    store = damaged.store
    ctx = StudioContext(store=store, registry=ModelRegistry(store.data_dir), default_model=None)
    keys = ("gallery", "slider", "heatmap", "info", "download", "pair_a", "pair_b", "msg")
    p = SimpleNamespace(**{k: k for k in keys})  # the handlers only use the components as dict keys
    ids = damaged.edits[0]
    st = {"cand_ids": ids, "selected": 1, "pair": ids[:2]}
    out = _panel_updates(ctx, p, st)
    shown = [path for path, _ in out["gallery"]["value"]]
    assert shown[0] == str(store.image_path(store.candidate(ids[0]).output_hash))  # the intact one as is
    assert shown[1].startswith(str(ctx.previews.folder)) and shown[1] != shown[0]  # the lost one: placeholder
    assert "missing or damaged" in out["info"] and CHECK_COMMAND in out["info"]
    assert out["pair_b"]["value"] == shown[1] and out["download"]["interactive"] is False
    # the truncated source: both sides of the compare slider of every candidate of that edit
    out2 = _panel_updates(ctx, p, {"cand_ids": damaged.edits[2], "selected": 0, "pair": []})
    assert out2["slider"][0].startswith(str(ctx.previews.folder))
    with pytest.raises(StoreError, match="damaged"):
        store.load_image(damaged.cut.source_hash)
    msg = export_message(ctx)
    assert msg.startswith("✓ Exported") and "Skipped" in msg and CHECK_COMMAND in msg


def test_check_reports_and_prunes(damaged, report):
    store = damaged.store
    data = store.data_dir
    r = run_py("-m", "feedback.store", "check", "--data", str(data))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 image(s) missing or damaged" in r.stdout and "--prune" in r.stdout, r.stdout
    assert f"{len(damaged.affected)} candidate(s)" in r.stdout

    r = run_py("-m", "feedback.store", "check", "--data", str(data), "--prune")
    assert r.returncode == 0 and "Pruned" in r.stdout, r.stdout + r.stderr
    r_again = run_py("-m", "feedback.store", "check", "--data", str(data))
    assert r_again.returncode == 0 and "all present and readable" in r_again.stdout

    store2 = Store(data)
    now = confirmed(store2)
    assert len(now["candidates"]) == len(damaged.before["candidates"]) - len(damaged.affected)
    assert len(now["ratings"]) == len(damaged.before["ratings"]) - len(damaged.affected_ratings)
    for uid, row in now["ratings"].items():  # the ratings that stay are untouched
        assert damaged.before["ratings"][uid] == row
    backups = list((data / "damaged").glob("pruned-*.json"))
    assert len(backups) == 1
    saved = json.loads(backups[0].read_text())
    assert {c["id"] for c in saved["candidates"]} == damaged.affected
    assert {x["id"] for x in saved["ratings"]} == damaged.affected_ratings
    assert (data / "damaged" / f"{damaged.cut.source_hash}.png").is_file()  # the damaged file moved aside
    assert store2.integrity_check() == "ok"
    report(f"`{CHECK_COMMAND} --data DIR` on that store",
           "exit 1 and a list of the lost images with the candidates/ratings depending on them; "
           "`--prune`: exit 0",
           "pruned rows are written to damaged/pruned-*.json first; damaged files moved to damaged/",
           pruned_candidates=len(damaged.affected), pruned_ratings=len(damaged.affected_ratings))
