"""The feedback store under machine faults: a full disk, a read-only or missing data folder, and the
write lock held by another program past busy_timeout. Each ends in a message naming the folder and
what to do, and every rating and candidate confirmed before the fault is still there."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from feedback.store import Store, StoreBusyError, StoreFullError, StoreUnavailableError
from tests.faults.conftest import add_edit, assert_all_kept, confirmed, fill_disk, rate_all, run_py


def test_disk_full_while_saving_an_edit_and_a_rating(mounts, report):
    disk = mounts.tmpfs("disk", 2048)
    rng = np.random.default_rng(0)
    store = Store(disk / "data")
    for _ in range(3):
        rate_all(store, add_edit(store, rng))
    before = confirmed(store)
    filler = fill_disk(disk)

    with pytest.raises(StoreFullError) as edit_err:  # the image files no longer fit
        add_edit(store, rng)
    ids = list(before["ratings"].values())[0][2]
    with pytest.raises(StoreFullError) as rating_err:  # the database page no longer fits (SQLITE_FULL)
        for _ in range(2000):  # the WAL may still have room for a few rows: rate until it has none
            store.add_rating("carol", "thumb", "down", ids)
    for err in (edit_err.value, rating_err.value):
        msg = str(err)
        assert str(disk / "data") in msg and "needs about" in msg and "free" in msg, msg
        assert "rollback" not in msg.lower()
    assert "the edit" in str(edit_err.value) and "thumb rating" in str(rating_err.value)
    assert isinstance(rating_err.value.__cause__, Exception)
    # the studio keeps serving what it has: reads work on the same connection while the disk is full
    assert store.counts()["candidates"] == len(before["candidates"])
    assert store.load_image(list(before["candidates"].values())[0][2]).size == (48, 48)
    kept_full = assert_all_kept(store, {"candidates": before["candidates"], "ratings": before["ratings"]})

    filler.unlink()  # space freed: the same store (no restart) saves again
    new_ids = add_edit(store, rng)
    store.add_rating("carol", "thumb", "down", new_ids[:1])
    kept = assert_all_kept(store, before)
    assert store.counts()["candidates"] == len(before["candidates"]) + 2
    report("Disk full while saving an edit / a rating (tmpfs filled to 0 bytes free)",
           str(edit_err.value), f"{kept['candidates_kept']} of {kept['candidates_kept']} candidates, "
           f"{kept['ratings_kept']} of {kept['ratings_kept']} ratings; integrity ok; saving works again once "
           "space is freed, without a restart", **kept_full)


def test_disk_full_during_export(mounts, tmp_path, report):
    rng = np.random.default_rng(1)
    store = Store(tmp_path / "data")
    for _ in range(4):
        rate_all(store, add_edit(store, rng, side=96))
    before = confirmed(store)
    small = mounts.tmpfs("exports", 64)
    with pytest.raises(StoreFullError) as err:
        store.export_dataset(small / "dataset-1")
    msg = str(err.value)
    assert str(small / "dataset-1") in msg and "needs about" in msg and "untouched" in msg, msg
    assert not (small / "dataset-1").exists()  # no half export that would load without its ratings
    kept = assert_all_kept(store, before)
    # the same export to a disk with room works
    out = store.export_dataset(tmp_path / "ok")
    assert (out / "ratings" / "train-00000-of-00001.parquet").is_file()
    report("Disk full while exporting the dataset", msg, "the store untouched (every candidate and rating); "
           "no partial export folder left", **kept)


def test_read_only_or_missing_data_folder(mounts, tmp_path, report):
    rng = np.random.default_rng(2)
    src = tmp_path / "src"
    with Store(src / "data") as store:
        rate_all(store, add_edit(store, rng))
        before = confirmed(store)
    ro = mounts.read_only(src, "ro")
    for folder in (ro / "data", ro / "not-there" / "data"):  # read-only; missing and cannot be created
        with pytest.raises(StoreUnavailableError) as err:
            Store(folder)
        assert str(folder) in str(err.value) and "--data" in str(err.value)
    # the studio refuses to start, at once, with the same message (exit code 1, no traceback)
    t0 = time.monotonic()
    r = run_py("launch.py", "--tiny-demo", "--data", str(ro / "data"), "--port", "1")
    wall = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert str(ro / "data") in r.stderr and "--data" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # the CLI check reads nothing it cannot open and says so
    r2 = run_py("-m", "feedback.store", "check", "--data", str(ro / "data"))
    assert r2.returncode == 2 and "--data" in r2.stderr, r2.stderr
    with Store(src / "data") as store:
        kept = assert_all_kept(store, before)
    report("Data folder read-only (read-only bind mount) or missing and not creatable",
           r.stderr.strip().removeprefix("error: "), "the folder is not touched; everything in it stays",
           launch_exit_code=r.returncode, launch_refusal_s=round(wall, 2), **kept)


HOLD_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


def test_write_lock_held_past_busy_timeout(tmp_path, report):
    rng = np.random.default_rng(3)
    store = Store(tmp_path / "data", busy_timeout_s=0.5)
    ids = add_edit(store, rng)
    rate_all(store, ids)
    before = confirmed(store)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.db_path), "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError) as err:
            store.add_rating("alice", "thumb", "down", ids[:1])
        waited = time.monotonic() - t0
        with pytest.raises(StoreBusyError):
            add_edit(store, rng)
        assert store.counts()["ratings"] == len(before["ratings"])  # reads still work under the lock
    finally:
        holder.kill()
        holder.wait()
    msg = str(err.value)
    assert "thumb rating" in msg and str(store.db_path) in msg and "try again" in msg, msg
    assert 0.4 < waited < 5
    store.add_rating("alice", "thumb", "down", ids[:1])  # the lock is gone: the retry is saved
    kept = assert_all_kept(store, before)
    report("Another program holds SQLite's write lock past busy_timeout", msg,
           "every earlier rating and candidate; the retry after the lock is released is saved",
           waited_s=round(waited, 2), **kept)
