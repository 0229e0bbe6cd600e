"""Fixtures that produce machine faults for real: a small tmpfs (a disk that fills up), a read-only bind
mount, a filled disk, and a small feedback store to lose things from.

Mounting needs root (CI runs as root) and a kernel/container that allows it; where it does not, the test
is skipped with the reason. ``FAULT_REPORT=path.jsonl`` makes each test append what the person saw and
what was kept (the figures of docs/faults.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from feedback.store import NewCandidate, Store

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"think": False, "temperature": 1.0, "top_k": 64, "top_p": 1.0}


def _mount(*args: str) -> str:
    """Run mount; the error text ("" on success)."""
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    return "" if r.returncode == 0 else (r.stderr.strip() or f"mount exited with {r.returncode}")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Any]:
    """``mounts.tmpfs(name, size_kb)`` and ``mounts.read_only(src, name)``: fresh mount points under
    tmp_path, unmounted after the test; skip the test (with why) where mounting is not allowed."""
    done: list[Path] = []

    class Mounts:
        @staticmethod
        def tmpfs(name: str, size_kb: int) -> Path:
            if os.geteuid() != 0:
                pytest.skip("mounting a tmpfs needs root (CI runs the fault suite as root)")
            target = tmp_path / name
            target.mkdir()
            err = _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(target))
            if err:
                pytest.skip(f"cannot mount a tmpfs here: {err}")
            done.append(target)
            return target

        @staticmethod
        def read_only(src: Path, name: str) -> Path:
            if os.geteuid() != 0:
                pytest.skip("a read-only bind mount needs root (CI runs the fault suite as root)")
            target = tmp_path / name
            target.mkdir()
            err = _mount("--bind", str(src), str(target))
            if err:
                pytest.skip(f"cannot bind-mount here: {err}")
            done.append(target)
            err = _mount("-o", "remount,bind,ro", str(target))
            if err:
                pytest.skip(f"cannot remount a bind mount read-only here: {err}")
            return target

    yield Mounts()
    for t in reversed(done):
        subprocess.run(["umount", "-l", str(t)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Write a filler file in ``folder`` until its file system has at most ``leave`` bytes free (the
    writes themselves hit ENOSPC: a really full disk). Delete the file to free the space again."""
    filler = folder / "filler.bin"
    chunk = 1 << 20
    with open(filler, "wb", buffering=0) as f:
        while chunk >= 1:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(chunk, max(1, free - leave)))
            except OSError:
                chunk //= 4
    return filler


def add_edit(store: Store, rng: np.random.Generator, n: int = 2, side: int = 48) -> list[int]:
    """One edit request with ``n`` candidates of random (incompressible) pixels."""
    def img() -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))

    cands = [NewCandidate(image=img(), tokens=[int(t) for t in rng.integers(0, 64, 40)], logprobs=[-0.5] * 40,
                          seed=i, idx=i) for i in range(n)]
    return store.add_candidates(source=img(), instruction="make it warmer", bundle_id="tiny@1", weights_hash="w",
                                settings=SETTINGS, candidates=cands, rater="alice")


def rate_all(store: Store, ids: list[int]) -> None:
    """One rating of every kind over ``ids`` (≥ 2 candidates of one edit)."""
    store.add_rating("alice", "thumb", "up", [ids[0]])
    store.add_rating("alice", "star", 4, [ids[1]])
    store.add_rating("bob", "pair", "A", ids[:2])
    store.add_rating("bob", "best_of_n", ids[0], ids)


def confirmed(store: Store) -> dict[str, Any]:
    """Everything a person has confirmed: candidates (tokens, images) and ratings, by uid."""
    return {"candidates": {c.uid: (c.tokens, c.source_hash, c.output_hash) for c in store.candidates()},
            "ratings": {r.uid: (r.kind, r.value, r.candidate_ids) for r in store.ratings()}}


def assert_all_kept(store: Store, before: dict[str, Any]) -> dict[str, int]:
    """Every candidate and rating of ``before`` is still there, unchanged, with readable images; the database
    passes its integrity check. Returns the counts kept (for the report)."""
    assert store.integrity_check() == "ok"
    now = confirmed(store)
    for uid, row in before["candidates"].items():
        assert now["candidates"].get(uid) == row, f"candidate {uid} lost or changed"
        assert store.image_problem(row[1], verify_hash=True) is None
        assert store.image_problem(row[2], verify_hash=True) is None
    for uid, row in before["ratings"].items():
        assert now["ratings"].get(uid) == row, f"rating {uid} lost or changed"
    return {"candidates_kept": len(before["candidates"]), "ratings_kept": len(before["ratings"])}


@pytest.fixture
def report() -> Callable[..., None]:
    """``report(fault, seen, kept, **figures)``: one row of docs/faults.md, when $FAULT_REPORT is set."""
    def write(fault: str, seen: str, kept: str, **figures: Any) -> None:
        path = os.environ.get("FAULT_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"fault": fault, "seen": seen, "kept": kept, **figures}) + "\n")

    return write


def run_py(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    """``python *args`` from the repository root, output captured as text."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)
