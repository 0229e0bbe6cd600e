"""Feedback store: writes, reads for training, migrations, durability under kill -9, export/import."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feedback.store import NewCandidate, Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"think": False, "temperature": 1.0, "top_k": 2048, "top_p": 1.0, "cfg_text": 1.0, "n": 2}


def _img(seed: int, size: tuple[int, int] = (16, 8)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _add_edit(
    store: Store, seed: int = 0, n: int = 2, parent_id: int | None = None, instruction: str = "make it grey"
):
    src = _img(seed)
    cands = [
        NewCandidate(
            image=_img(seed * 100 + i + 1),
            tokens=[5, 6, 7 + i, 8],
            logprobs=[-0.5, -1.0, -0.25 * (i + 1), 0.0],
            seed=1000 + i,
            idx=i,
            reasoning=f"reason {i}",
            grid_shape=(1, 2),
            timings={"total": 0.1},
        )
        for i in range(n)
    ]
    return store.add_candidates(
        source=src,
        instruction=instruction,
        bundle_id="tiny@0",
        weights_hash="abc",
        settings=SETTINGS,
        candidates=cands,
        parent_id=parent_id,
        rater="tester",
    )


def test_candidates_round_trip_and_images_are_lossless(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        ids = _add_edit(store)
        c = store.candidate(ids[1])
        assert c.tokens == [5, 6, 8, 8] and c.logprobs == [-0.5, -1.0, -0.5, 0.0]
        assert c.logprob_sum == pytest.approx(-2.0)
        assert (c.seed, c.idx, c.think, c.top_k, c.grid_h, c.grid_w) == (1001, 1, False, 2048, 1, 2)
        assert c.settings["cfg_text"] == 1.0 and c.timings == {"total": 0.1}
        assert np.array_equal(np.asarray(store.load_image(c.output_hash)), np.asarray(_img(2)))
        assert store.image_path(c.output_hash).exists()
        assert store.integrity_check() == "ok"
        assert store._con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [e["n"] for e in store.recent_edits()] == [2]
        other = store.candidate(_add_edit(store, seed=1, n=3)[0]).edit_uid  # asked for by "tester" too
        assert [e["n"] for e in store.recent_edits()] == [3, 2]
        assert [e["edit_uid"] for e in store.recent_edits(1)] == [other]
        assert [e["n"] for e in store.recent_edits(rater="tester")] == [3, 2]
        assert store.recent_edits(rater="someone else") == []


def test_blind_ab_test_edits_are_not_among_the_users_edits(tmp_path: Path) -> None:
    """A blind A/B round stores each bundle's held-out edit as an edit of its own (``settings["ab_test"]``):
    the lists of earlier edits and the user's totals leave them out; an export still holds them."""
    with Store(tmp_path) as store:
        mine = store.candidate(_add_edit(store, 0)[0]).edit_uid
        blind = []
        for bundle in ("old@0", "new@1"):  # one round: the same held-out photo, one candidate per bundle
            (cid,) = store.add_candidates(source=_img(7), instruction="Cool down the colours.", bundle_id=bundle,
                                          weights_hash=bundle, settings={**SETTINGS, "ab_test": True},
                                          candidates=[NewCandidate(_img(8), [1, 2], [-0.1, -0.2], 3)])
            blind.append(cid)
        store.add_rating("judge", "pair", "A", blind)
        assert [e["edit_uid"] for e in store.recent_edits()] == [mine]
        assert [e["edit_uid"] for e in store.recent_edits(rater="tester")] == [mine]
        assert len(store.recent_edits(include_ab_test=True)) == 3
        assert store.ab_test_ids([*blind, store.edit_candidates(mine)[0].id]) == set(blind)
        c = store.counts()
        assert (c["edits"], c["candidates"], c["ab_edits"], c["ab_candidates"], c["ab_rounds"]) == (3, 4, 2, 2, 1)

        # an edit's ratings are those that stand: thumbs up, down, up again by one rater is one rating
        a, b = (x.id for x in store.edit_candidates(mine))
        for v in ("up", "down", "up"):
            store.add_rating("ann", "thumb", v, [a])
        store.add_rating("bob", "thumb", "down", [a])
        store.add_rating("ann", "pair", "A", [a, b])
        store.add_rating("ann", "pair", "tie", [b, a])  # the same two candidates: replaces her A
        assert store.recent_edits()[0]["n_ratings"] == 3 == len(store.standing_ratings(candidate_id=a))
        assert len(store.ratings(candidate_id=a)) == 6  # the history stays


def test_ratings_validation_and_training_reads(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        a, b = _add_edit(store, 0)
        other = _add_edit(store, 1, instruction="flip it")[0]
        store.add_rating(rater="ann", kind="thumb", value="up", candidate_ids=[a])
        store.add_rating("ann", "thumb", "down", [b])  # positional, as in docs/INTERFACES.md
        store.add_rating(rater="ann", kind="thumb", value="up", candidate_ids=[b])  # changed her mind
        store.add_rating(rater="ann", kind="star", value=4, candidate_ids=[a])
        store.add_rating(rater="bob", kind="pair", value="B", candidate_ids=[a, b], shown_order=[b, a])
        store.add_rating(rater="dan", kind="pair", value="tie", candidate_ids=[b, a])
        store.add_rating(rater="cat", kind="best_of_n", value=a, candidate_ids=[a, b])
        # a pair across different instructions carries no DPO signal: stored, but not returned
        store.add_rating(rater="cat", kind="pair", value="A", candidate_ids=[a, other])
        for bad in [
            dict(kind="thumb", value="maybe", candidate_ids=[a]),
            dict(kind="star", value=6, candidate_ids=[a]),
            dict(kind="star", value=2.5, candidate_ids=[a]),
            dict(kind="pair", value="C", candidate_ids=[a, b]),
            dict(kind="pair", value="A", candidate_ids=[a]),
            dict(kind="best_of_n", value=999, candidate_ids=[a, b]),
            dict(kind="thumb", value="up", candidate_ids=[12345]),
            dict(kind="vote", value="up", candidate_ids=[a]),
            dict(kind="pair", value="A", candidate_ids=[a, b], shown_order=[a, other]),
        ]:
            with pytest.raises(StoreError):
                store.add_rating(rater="x", **bad)
        with pytest.raises(StoreError):
            store.add_rating(rater="  ", kind="thumb", value="up", candidate_ids=[a])

        # a rater changing their mind replaces their earlier rating of the same candidates
        store.add_rating(rater="bob", kind="pair", value="A", candidate_ids=[b, a], shown_order=[b, a])
        store.add_rating(rater="bob", kind="pair", value="B", candidate_ids=[a, b], shown_order=[b, a])
        thumbs = {t.candidate.id: t.up for t in store.thumbs()}
        assert thumbs == {a: True, b: True}
        assert [(s.candidate.id, s.stars) for s in store.stars()] == [(a, 4)]
        pairs = store.preference_pairs()
        assert [(p.chosen.id, p.rejected.id, p.kind) for p in pairs] == [(a, b, "best_of_n"), (b, a, "pair")]
        assert pairs[1].chosen.tokens == [5, 6, 8, 8] and pairs[1].rejected.tokens == [5, 6, 7, 8]
        assert [p.kind for p in store.preference_pairs(include_best_of_n=False)] == ["pair"]
        pair_row = store.ratings("pair")[-1]
        assert pair_row.candidate_ids == [a, b] and pair_row.shown_order == [b, a]
        c = store.counts()
        assert (c["thumbs_up"], c["thumbs_down"], c["stars"], c["pairs_decided"], c["pairs_undecided"]) == (
            2,
            0,
            1,
            2,
            1,
        )
        assert c["preference_pairs"] == 2 and c["raters"] == 4 and c["ratings"] == 10


def test_counts_the_pairs_that_thumbs_and_stars_imply(tmp_path: Path) -> None:
    """graded_pairs: within one rater's thumbs (or stars) of one edit, each two graded differently; other
    raters, other photos and equal grades give none (the rule of feedback.pairs.graded_pairs)."""
    from feedback.pairs import star_pairs, thumb_pairs
    from studio.ratings import readiness

    with Store(tmp_path) as store:
        a, b, c = _add_edit(store, 0, n=3)
        (d,) = _add_edit(store, 1, n=1)
        for cid, v in ((a, "up"), (b, "down"), (c, "down"), (d, "up")):
            store.add_rating("ann", "thumb", v, [cid])
        store.add_rating("bob", "thumb", "up", [a])  # alone in bob's thumbs: no pair
        for cid, v in ((a, 5), (b, 3), (c, 3)):
            store.add_rating("ann", "star", v, [cid])
        counts = store.counts()
        implied = len(thumb_pairs(store.thumbs())) + len(star_pairs(store.stars()))
        assert counts["graded_pairs"] == implied == 2 + 2 and counts["preference_pairs"] == 0
        assert readiness(counts)["dpo"]["have"] == 4
        store.add_rating("ann", "thumb", "down", [a])  # changes her mind: the latest thumb stands
        assert store.counts()["graded_pairs"] == 0 + 2 == len(thumb_pairs(store.thumbs())) + 2


def test_history_tree(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        root = _add_edit(store, 0)[0]
        child = _add_edit(store, 1, parent_id=root)[1]
        grandchild = _add_edit(store, 2, parent_id=child)[0]
        assert [c.id for c in store.lineage(grandchild)] == [root, child, grandchild]
        assert {c.id for c in store.children(root)} == {child, child - 1}


def test_migrations_upgrade_old_db_and_refuse_newer(tmp_path: Path) -> None:
    from feedback import store as store_mod

    # A database at today's schema with data in it, then code that knows one more migration.
    now = store_mod.SCHEMA_VERSION
    with Store(tmp_path) as s1:
        a = _add_edit(s1)[0]
        s1.add_rating(rater="ann", kind="thumb", value="up", candidate_ids=[a])
        assert s1.schema_version == now

    def add_note(con: sqlite3.Connection) -> None:
        con.execute("ALTER TABLE ratings ADD COLUMN note TEXT NOT NULL DEFAULT ''")

    with Store(tmp_path, migrations=[*store_mod.MIGRATIONS, add_note]) as s2:
        assert s2.schema_version == now + 1
        assert [t.candidate.id for t in s2.thumbs()] == [a]
        cols = [r[1] for r in s2._con.execute("PRAGMA table_info(ratings)")]
        assert "note" in cols
    # Older code must not touch a database from the future.
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path, migrations=store_mod.MIGRATIONS)

    # A failing migration rolls back completely: version and schema unchanged.
    def broken(con: sqlite3.Connection) -> None:
        con.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Store(tmp_path, migrations=[*store_mod.MIGRATIONS, add_note, broken])
    with Store(tmp_path, migrations=[*store_mod.MIGRATIONS, add_note]) as s3:
        assert s3.schema_version == now + 1
        assert s3._con.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchone() is None


def test_full_resolution_migration_keeps_old_rows_readable(tmp_path: Path) -> None:
    """A store written before full-resolution results (schema 1) opens with today's code: its rows read
    as original = source and full = output; new rows keep their own original, full image and provenance,
    and an export carries both images."""
    from feedback import store as store_mod

    src, out = _img(1, (16, 8)), _img(2, (16, 8))
    with Store(tmp_path, migrations=store_mod.MIGRATIONS[:1]) as s1:  # as version-1 code wrote its rows
        sh, oh = s1.put_image(src), s1.put_image(out)
        row = {"uid": "old", "edit_uid": "e-old", "idx": 0, "parent_id": None, "source_hash": sh, "output_hash": oh,
               "instruction": "make it grey", "bundle_id": "tiny@0", "weights_hash": "abc", "seed": 3, "think": 0,
               "temperature": 1.0, "top_k": 0, "top_p": 1.0, "settings": json.dumps(SETTINGS), "grid_h": 1,
               "grid_w": 2, "tokens": "[1, 2]", "logprobs": "[-1.0, -2.0]", "logprob_sum": -3.0, "reasoning": "",
               "timings": "{}", "rater": "ann", "created_at": 1.0}
        old_id = s1._write(lambda con: s1._insert_raw_candidate(con, row))
        assert s1.schema_version == 1
    with Store(tmp_path) as store:
        assert store.schema_version == store_mod.SCHEMA_VERSION >= 2
        old = store.candidate(old_id)
        assert (old.original_hash, old.full_hash, old.render) == (sh, oh, {})
        # A new edit of a photo larger than the model's picture keeps all four images, losslessly.
        photo, full = _img(3, (48, 24)), _img(4, (48, 24))
        prov = {"method": "render", "geometry": {"scale": np.float32(1.0)}, "size": (48, 24)}
        (new_id,) = store.add_candidates(
            source=src, original=photo, instruction="make it grey", bundle_id="tiny@0", weights_hash="abc",
            settings=SETTINGS, candidates=[NewCandidate(out, [1], [-1.0], 5, 0, full=full, render=prov)])
        new = store.candidate(new_id)
        assert new.source_hash == sh and new.output_hash == oh
        assert store.load_image(new.original_hash).tobytes() == photo.tobytes()
        assert store.load_image(new.full_hash).tobytes() == full.tobytes()
        assert new.render == {"method": "render", "geometry": {"scale": 1.0}, "size": [48, 24]}
        # The same edit and model input as the old row: training still pairs them.
        assert (new.source_hash, new.instruction) == (old.source_hash, old.instruction)
        assert store.check().ok
        store.add_rating(rater="ann", kind="pair", value="B", candidate_ids=[old_id, new_id])
        folder = store.export_dataset(tmp_path / "export")
    import datasets

    rows = {r["uid"]: r for r in datasets.load_from_disk(str(folder))["candidates"]}
    assert rows["old"]["full_image"].tobytes() == out.tobytes()
    got = rows[new.uid]
    assert got["full_image"].size == (48, 24) and got["full_image"].tobytes() == full.tobytes()
    assert got["original_image"].tobytes() == photo.tobytes() and json.loads(got["render"])["method"] == "render"
    with Store(tmp_path / "other") as other:
        assert other.import_dataset(folder) == {"candidates": 2, "ratings": 1}
        back = other.candidate(other.id_for_uid(new.uid))
        assert (back.original_hash, back.full_hash, back.render) == (new.original_hash, new.full_hash, new.render)
        assert other.load_image(back.full_hash).tobytes() == full.tobytes()


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from PIL import Image
    from feedback.store import NewCandidate, Store
    store = Store(sys.argv[1])
    tag = sys.argv[2]
    settings = {"think": False, "temperature": 1.0, "top_k": 8, "top_p": 1.0}
    def img(i):
        return Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    ids = store.add_candidates(source=img(0), instruction="x", bundle_id="t@0", weights_hash="h",
        settings=settings, candidates=[NewCandidate(img(1), [1], [-1.0], 1, 0), NewCandidate(img(2), [2], [-2.0], 2, 1)])
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        if i % 5 == 0:  # also commit candidates (image files + rows) now and then
            cid = store.add_candidates(source=img(0), instruction="x", bundle_id="t@0", weights_hash="h",
                settings=settings, candidates=[NewCandidate(img(1000 * int(tag != "a") + i), [3, i], [-1.0, -0.5], i, 0)])[0]
            print("cand", cid, flush=True)
        rid = store.add_rating(rater=tag, kind="pair", value="A" if i % 2 else "B", candidate_ids=ids)
        print("rating", rid, flush=True)  # printed only after the commit returned
    """
)


def _start_writer(data: Path, tag: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data), tag], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


def _collect(p: subprocess.Popen[str], n_ratings: int) -> tuple[list[int], list[int]]:
    ratings: list[int] = []
    cands: list[int] = []
    assert p.stdout is not None
    while len(ratings) < n_ratings:
        line = p.stdout.readline()
        assert line, "writer died"
        kind, val = line.split()
        (ratings if kind == "rating" else cands).append(int(val))
    return ratings, cands


def _kill(p: subprocess.Popen[str]) -> tuple[list[int], list[int]]:
    """kill -9, then read whatever it reported before dying (those commits returned)."""
    os.kill(p.pid, signal.SIGKILL)
    out, _ = p.communicate()
    ratings, cands = [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            (ratings if parts[0] == "rating" else cands).append(int(parts[1]))
    return ratings, cands


@pytest.mark.parametrize("busy_s", [0.05, 0.23, 0.41])
def test_kill_9_during_writes_loses_nothing_committed(tmp_path: Path, busy_s: float) -> None:
    p = _start_writer(tmp_path, "a")
    ratings, cands = _collect(p, 20)
    time.sleep(busy_s)  # the writer keeps committing; the kill lands at an arbitrary point of a write
    more_r, more_c = _kill(p)
    assert more_r, "the writer was not writing when killed"
    ratings += more_r
    cands += more_c
    assert p.returncode == -signal.SIGKILL
    # No leftover uncommitted state is fatal: the DB opens, is consistent, and holds every commit.
    with Store(tmp_path) as store:
        assert store.integrity_check() == "ok"
        stored = {r.id for r in store.ratings()}
        assert set(ratings) <= stored, f"lost {sorted(set(ratings) - stored)}"
        for c in store.candidates(cands):
            # a committed row never points at a missing or torn image file
            store.load_image(c.output_hash).load()
        # an interrupted image write leaves at most a temp file, never a partial "<hash>.png"
        for f in tmp_path.glob("images/*/*.png"):
            if not f.name.startswith(".tmp-"):
                Image.open(f).load()
        fk = store._con.execute("PRAGMA foreign_key_check").fetchall()
        assert fk == []


def test_two_writer_processes_do_not_clobber(tmp_path: Path) -> None:
    Store(tmp_path).close()  # create the schema once so both start from the same file
    pa, pb = _start_writer(tmp_path, "a"), _start_writer(tmp_path, "b")
    ra, _ = _collect(pa, 40)
    rb, _ = _collect(pb, 40)
    more_a, _ = _kill(pa)
    more_b, _ = _kill(pb)
    ra, rb = ra + more_a, rb + more_b
    assert not set(ra) & set(rb)
    with Store(tmp_path) as store:
        by_rater: dict[str, set[int]] = {"a": set(), "b": set()}
        for r in store.ratings():
            by_rater[r.rater].add(r.id)
        assert set(ra) <= by_rater["a"] and set(rb) <= by_rater["b"]


def test_threads_share_one_store(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with Store(tmp_path) as store:
        a, b = _add_edit(store)

        def rate(i: int) -> int:
            return store.add_rating(
                rater=f"tab{i % 2}", kind="star", value=1 + i % 5, candidate_ids=[a if i % 2 else b]
            )

        with ThreadPoolExecutor(4) as ex:
            ids = list(ex.map(rate, range(40)))
        assert len(set(ids)) == 40 and len(store.ratings("star")) == 40


def test_export_import_round_trip(tmp_path: Path) -> None:
    import datasets

    src = Store(tmp_path / "a")
    a, b = _add_edit(src, 0)
    c = _add_edit(src, 1, parent_id=b)[0]
    src.add_rating(rater="ann", kind="pair", value="A", candidate_ids=[a, b], shown_order=[b, a])
    src.add_rating(rater="ann", kind="best_of_n", value=b, candidate_ids=[a, b])
    src.add_rating(rater="ann", kind="thumb", value="down", candidate_ids=[c])
    src.add_rating(rater="bob", kind="star", value=5, candidate_ids=[a])
    out = src.export_dataset(tmp_path / "export")

    # It is a real datasets folder: both configs load, images decode to the stored pixels.
    ds = datasets.load_dataset(str(out), "candidates", split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 4 and ds[0]["tokens"] == [5, 6, 7, 8]
    assert np.array_equal(np.asarray(ds[0]["source_image"].convert("RGB")), np.asarray(_img(0)))
    rds = datasets.load_dataset(str(out), "ratings", split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(rds["kind"]) == ["best_of_n", "pair", "star", "thumb"]
    disk = datasets.load_from_disk(str(out))  # the same folder as saved splits
    assert disk["candidates"]["uid"] == ds["uid"] and disk["ratings"].num_rows == 4

    # Into a store that already has other data, so ids differ.
    dst = Store(tmp_path / "b")
    _add_edit(dst, 7)
    assert dst.import_dataset(out) == {"candidates": 4, "ratings": 4}
    assert dst.import_dataset(out) == {"candidates": 0, "ratings": 0}  # idempotent

    def summary(s: Store) -> list[tuple]:
        return sorted(
            (p.kind, p.chosen.uid, p.rejected.uid, tuple(p.chosen.tokens), p.chosen.logprob_sum)
            for p in s.preference_pairs()
        )

    assert summary(src) == summary(dst)
    assert [(t.candidate.uid, t.up) for t in dst.thumbs()] == [(t.candidate.uid, t.up) for t in src.thumbs()]
    assert [(s.candidate.uid, s.stars) for s in dst.stars()] == [
        (s.candidate.uid, s.stars) for s in src.stars()
    ]
    imported_c = dst.candidate(dst.id_for_uid(src.candidate(c).uid))
    assert dst.candidate(imported_c.parent_id).uid == src.candidate(b).uid
    assert (
        dst.load_image(imported_c.output_hash).tobytes()
        == src.load_image(src.candidate(c).output_hash).tobytes()
    )
    pair = [r for r in dst.ratings("pair")][0]
    assert [dst.candidate(i).uid for i in pair.shown_order] == [src.candidate(b).uid, src.candidate(a).uid]
    assert json.loads(json.dumps(dst.counts())) == dst.counts()
    src.close()
    dst.close()


def test_unwritable_bad_inputs(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        with pytest.raises(StoreError, match="settings"):
            store.add_candidates(
                source=_img(0),
                instruction="x",
                bundle_id="b",
                weights_hash="h",
                settings={"think": False},
                candidates=[],
            )
        with pytest.raises(StoreError, match="empty"):
            store.add_candidates(
                source=_img(0),
                instruction="  ",
                bundle_id="b",
                weights_hash="h",
                settings=SETTINGS,
                candidates=[],
            )
        with pytest.raises(StoreError, match="log-probs"):
            store.add_candidates(
                source=_img(0),
                instruction="x",
                bundle_id="b",
                weights_hash="h",
                settings=SETTINGS,
                candidates=[NewCandidate(_img(1), [1, 2], [-1.0], 0)],
            )
        assert store.candidates() == []
        with pytest.raises(StoreError, match="missing"):
            store.load_image("0" * 64)


def test_the_rated_line_shows_the_ratings_that_stand(tmp_path: Path) -> None:
    from studio.ratings import standing_label as _standing_label

    with Store(tmp_path) as store:
        a, b = _add_edit(store, seed=3)
        store.add_rating("ann", "star", 4, [a])
        store.add_rating("ann", "thumb", "down", [a])
        store.add_rating("ann", "best_of_n", a, [a, b])
        for v in ("A", "tie", "both_bad", "B"):  # one A/B pair, the rater changing their mind
            store.add_rating("ann", "pair", v, [a, b])
        store.add_rating("bob", "thumb", "up", [a])
        labels = [_standing_label(r, a) for r in store.standing_ratings(candidate_id=a)]
        # the stars, thumb and best stay in view; the pair shows its last decision only, from a's side
        assert labels == ["★★★★", "thumbs down", "best of all", "A/B: lost", "thumbs up"]
        assert [_standing_label(r, b) for r in store.standing_ratings(candidate_id=b)] == ["not best", "A/B: won"]


def test_export_of_a_store_without_ratings_opens(tmp_path: Path) -> None:
    """A part with no rows still gets a shard: load_from_disk cannot open a split saved with none."""
    import datasets

    store = Store(tmp_path / "data")
    out = store.export_dataset(tmp_path / "export")
    parts = datasets.load_from_disk(str(out))
    assert len(parts["candidates"]) == 0 and len(parts["ratings"]) == 0
    assert "instruction" in parts["candidates"].features
