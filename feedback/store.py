"""The feedback store: SQLite (WAL) rows + content-addressed PNG files in a data folder.

Layout of a data folder::

    <data>/feedback.sqlite3        candidates, ratings (schema versioned via PRAGMA user_version)
    <data>/images/ab/abcdef….png   every image once, named by the sha256 of its PNG bytes
    <data>/bundles/                fine-tuned bundles (found by the studio's model picker)

Durability rules (a process may be killed at any instant, ``kill -9`` included):
- image files are written to a temp file, fsync'ed and renamed *before* the row referencing them is
  committed, so a committed row never points at a missing or half-written file;
- every write is one ``BEGIN IMMEDIATE`` transaction, in WAL mode with ``synchronous=FULL``, so a
  commit that returned is on disk and a killed writer leaves at most an uncommitted (discarded) tail;
- several processes/threads may write at once: SQLite's lock serializes them (``busy_timeout``), and
  rows are only ever inserted, never rewritten, so raters in two tabs cannot clobber each other.

Faults of the machine end in a ``StoreError`` subclass whose message says what to do: ``StoreFullError``
(the disk is full: folder, space needed, space free), ``StoreBusyError`` (another program held the write
lock past ``busy_timeout``), ``StoreUnavailableError`` (the folder is read-only, missing or unreadable).
A failed write leaves every committed row as it was. ``python -m feedback.store check --data DIR
[--prune]`` finds stored images that are missing or damaged (see ``Store.check``).

The public reading API (``preference_pairs``, ``thumbs``, ``stars``) returns the exact generated
token ids, so training can compute log-probs of precisely what the rater saw.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engine.diskspace import is_no_space, no_space_message

DB_NAME = "feedback.sqlite3"
RATING_KINDS = ("thumb", "star", "pair", "best_of_n")
PAIR_VALUES = ("A", "B", "tie", "both_bad")
THUMB_VALUES = ("up", "down")
# SQL: the candidate row (table alias in {}) was made by a blind A/B round (settings["ab_test"] true)
AB_TEST_SQL = "COALESCE(json_extract({}.settings, '$.ab_test'), 0) != 0"


def standing_key(rater: str, kind: str, candidate_ids: Iterable[int]) -> tuple[str, str, tuple[int, ...]]:
    """Which rating a newer one replaces: the same rater, kind and set of candidates (shown order aside)."""
    return rater, kind, tuple(sorted(candidate_ids))


class StoreError(RuntimeError):
    """The data folder or database cannot be used (newer schema, bad arguments, …)."""


class StoreFullError(StoreError):
    """The disk holding the data folder is full; the message names the folder and the space needed."""


class StoreBusyError(StoreError):
    """Another connection held the database's write lock for longer than ``busy_timeout``."""


class StoreUnavailableError(StoreError):
    """The data folder cannot be written (read-only, missing, no permission) or read."""


def unavailable_message(folder: Path, reason: object) -> str:
    """Why the data folder cannot be used, and how to choose another one."""
    return (f"The data folder {folder} cannot be used ({reason}). Make it writable, or choose another "
            "folder with --data DIR (or the EARL_STUDIO_DATA environment variable).")


def check_data_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove that files can be written there; the folder, or
    ``StoreUnavailableError`` naming it (read-only mount, missing parent, no permission)."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if is_no_space(e):
            raise StoreFullError(no_space_message(folder, None, "anything")) from e
        raise StoreUnavailableError(unavailable_message(folder, e.strerror or e)) from e
    return folder


def default_data_dir() -> Path:
    """``$EARL_STUDIO_DATA`` if set, else ``~/.earl-studio``."""
    env = os.environ.get("EARL_STUDIO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".earl-studio"


# --------------------------------------------------------------------------------------------- schema
def _exec_script(con: sqlite3.Connection, sql: str) -> None:
    """Run DDL statement by statement inside the caller's transaction (``executescript`` would
    COMMIT first, breaking a migration's all-or-nothing guarantee). No literals here hold "--" or ";"."""
    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    for stmt in body.split(";"):
        if stmt.strip():
            con.execute(stmt)


def _migrate_1(con: sqlite3.Connection) -> None:
    """Initial schema."""
    _exec_script(
        con,
        """
        CREATE TABLE images (
            hash        TEXT PRIMARY KEY,          -- sha256 hex of the PNG bytes
            width       INTEGER NOT NULL,
            height      INTEGER NOT NULL,
            created_at  REAL NOT NULL
        );
        CREATE TABLE candidates (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            uid             TEXT NOT NULL UNIQUE,  -- stable across export/import
            edit_uid        TEXT NOT NULL,         -- the N candidates of one request share it
            idx             INTEGER NOT NULL,      -- candidate index within the request
            parent_id       INTEGER REFERENCES candidates(id),  -- source was this result (history tree)
            source_hash     TEXT NOT NULL REFERENCES images(hash),
            output_hash     TEXT NOT NULL REFERENCES images(hash),
            instruction     TEXT NOT NULL,
            bundle_id       TEXT NOT NULL,         -- "name@version"
            weights_hash    TEXT NOT NULL,
            seed            INTEGER NOT NULL,
            think           INTEGER NOT NULL,
            temperature     REAL NOT NULL,
            top_k           INTEGER NOT NULL,
            top_p           REAL NOT NULL,
            settings        TEXT NOT NULL,         -- JSON: every sampling setting (cfg scales, n, …)
            grid_h          INTEGER NOT NULL,
            grid_w          INTEGER NOT NULL,
            tokens          TEXT NOT NULL,         -- JSON list[int]: every generated token id
            logprobs        TEXT NOT NULL,         -- JSON list[float], same length as tokens
            logprob_sum     REAL NOT NULL,
            reasoning       TEXT NOT NULL,
            timings         TEXT NOT NULL,         -- JSON {first_preview, total, …} seconds
            rater           TEXT,                  -- who asked for the edit
            created_at      REAL NOT NULL
        );
        CREATE INDEX candidates_edit ON candidates(edit_uid, idx);
        CREATE INDEX candidates_source ON candidates(source_hash, instruction);
        CREATE TABLE ratings (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            uid             TEXT NOT NULL UNIQUE,
            rater           TEXT NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN ('thumb', 'star', 'pair', 'best_of_n')),
            value           TEXT NOT NULL,         -- thumb: up/down; star: 1..5; pair: A/B/tie/both_bad;
                                                   -- best_of_n: the chosen candidate id
            candidate_ids   TEXT NOT NULL,         -- JSON list[int]; pair: [A, B]
            shown_order     TEXT NOT NULL,         -- JSON list[int]: candidate ids left→right on screen
            created_at      REAL NOT NULL
        );
        CREATE INDEX ratings_kind ON ratings(kind, created_at);
        CREATE TABLE rating_candidates (        -- join table: which candidates a rating touches
            rating_id       INTEGER NOT NULL REFERENCES ratings(id),
            candidate_id    INTEGER NOT NULL REFERENCES candidates(id),
            PRIMARY KEY (rating_id, candidate_id)
        );
        CREATE INDEX rating_candidates_cand ON rating_candidates(candidate_id);
        """,
    )


def _migrate_2(con: sqlite3.Connection) -> None:
    """Full-resolution results: each candidate may keep the photo at its own size (``original_hash``,
    what ``source_hash`` was fitted from) and the edit rendered at that size (``full_hash``), with the
    render's provenance (JSON). NULL in rows written before: there the original is the source and the
    full-resolution result is the model's output (``Candidate`` reads them so)."""
    _exec_script(
        con,
        """
        ALTER TABLE candidates ADD COLUMN original_hash TEXT REFERENCES images(hash);
        ALTER TABLE candidates ADD COLUMN full_hash TEXT REFERENCES images(hash);
        ALTER TABLE candidates ADD COLUMN render TEXT
        """,
    )


# Index i holds the migration from user_version i to i + 1. Append, never edit a released one.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1, _migrate_2]
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------------------------- rows
@dataclass
class Candidate:
    """One generated candidate, with everything needed to train on it."""

    id: int
    uid: str
    edit_uid: str
    idx: int
    parent_id: int | None
    source_hash: str
    output_hash: str
    instruction: str
    bundle_id: str
    weights_hash: str
    seed: int
    think: bool
    temperature: float
    top_k: int
    top_p: float
    settings: dict[str, Any]
    grid_h: int
    grid_w: int
    tokens: list[int]
    logprobs: list[float]
    logprob_sum: float
    reasoning: str
    timings: dict[str, float]
    rater: str | None
    created_at: float
    # The photo at its own size (what ``source_hash`` was fitted from) and the edit rendered at that size;
    # equal to source/output where the photo is no larger than the model's picture, or for rows stored
    # before full-resolution results. ``render``: the render's provenance ({} when there was none).
    original_hash: str = ""
    full_hash: str = ""
    render: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.original_hash = self.original_hash or self.source_hash
        self.full_hash = self.full_hash or self.output_hash


@dataclass
class Rating:
    id: int
    uid: str
    rater: str
    kind: str
    value: str
    candidate_ids: list[int]
    shown_order: list[int]
    created_at: float


@dataclass
class PreferencePair:
    """A chosen/rejected pair for the same source image and instruction (DPO)."""

    chosen: Candidate
    rejected: Candidate
    rater: str
    rating_id: int
    kind: str  # "pair" (explicit A/B) or "best_of_n" (chosen vs each other shown candidate)

    @property
    def source_hash(self) -> str:
        return self.chosen.source_hash

    @property
    def instruction(self) -> str:
        return self.chosen.instruction


@dataclass
class Thumb:
    candidate: Candidate
    up: bool
    rater: str
    rating_id: int


@dataclass
class Star:
    candidate: Candidate
    stars: int
    rater: str
    rating_id: int


@dataclass
class NewCandidate:
    """What the studio hands to ``Store.add_candidates`` for one finished candidate."""

    image: Image.Image
    tokens: list[int]
    logprobs: list[float]
    seed: int
    idx: int = 0
    reasoning: str = ""
    grid_shape: tuple[int, int] = (0, 0)
    timings: dict[str, float] = field(default_factory=dict)
    full: Image.Image | None = None  # the edit at the photo's resolution (None: the same as ``image``)
    render: dict[str, Any] = field(default_factory=dict)  # how ``full`` was made (engine.render provenance)


# ---------------------------------------------------------------------------------------------- store
def png_bytes(img: Image.Image) -> bytes:
    """Deterministic lossless PNG encoding (RGB; metadata dropped so equal pixels ⇒ equal bytes)."""
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _jsonable(x: Any) -> Any:
    """``x`` with numpy scalars and arrays, tuples and non-string keys made plain JSON (render provenance
    holds numpy numbers)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalar or array
        return _jsonable(x.tolist())
    return x


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems/OSes don't allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """temp file in the same folder → fsync → rename → fsync folder: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


class Store:
    """A feedback store in ``data_dir``. Thread-safe; several processes may share one folder."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        migrations: Sequence[Callable[[sqlite3.Connection], None]] | None = None,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        self.images_dir = self.data_dir / "images"
        self.db_path = self.data_dir / DB_NAME
        self._migrations = list(MIGRATIONS if migrations is None else migrations)
        self._lock = threading.RLock()
        self._busy_timeout_s = busy_timeout_s
        check_data_dir(self.data_dir)
        try:
            self.images_dir.mkdir(exist_ok=True)
            (self.data_dir / "bundles").mkdir(exist_ok=True)
            self._open(busy_timeout_s)
        except sqlite3.Error as e:
            raise self._explain(e, f"the database {self.db_path}", action="open") from e
        except OSError as e:
            raise StoreUnavailableError(unavailable_message(self.data_dir, e.strerror or e)) from e

    def _open(self, busy_timeout_s: float) -> None:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the write lock
        # up front instead of failing with SQLITE_BUSY when upgrading a read transaction.
        self._con = sqlite3.connect(
            self.db_path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._con.row_factory = sqlite3.Row
        self._con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"could not switch {self.db_path} to WAL mode (got {mode!r})")
        self._con.execute("PRAGMA synchronous = FULL")
        self._con.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    # -- lifecycle
    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._con.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")  # one process migrates; others wait, then see it done
            try:
                version = self.schema_version
                if version > len(self._migrations):
                    raise StoreError(
                        f"{self.db_path} has schema version {version}, newer than this code "
                        f"understands ({len(self._migrations)}); update EARL Studio"
                    )
                for i in range(version, len(self._migrations)):
                    self._migrations[i](self._con)
                    # PRAGMA can't take parameters; i is an int we control.
                    self._con.execute(f"PRAGMA user_version = {i + 1}")
                self._con.execute("COMMIT")
            except BaseException:
                if self._con.in_transaction:  # see _write
                    self._con.execute("ROLLBACK")
                raise

    def _write(self, fn: Callable[[sqlite3.Connection], Any], what: str = "this change", need: int = 0) -> Any:
        """Run ``fn`` in one write transaction. A machine fault (disk full, lock held too long, read-only
        folder) becomes a ``StoreError`` saying so; nothing of the transaction is kept, earlier commits are.
        ``what``/``need``: what is being saved and roughly how many bytes, for that message."""
        with self._lock:
            try:
                self._con.execute("BEGIN IMMEDIATE")
                out = fn(self._con)
                self._con.execute("COMMIT")
                return out
            except BaseException as e:
                # SQLite has already rolled back after SQLITE_FULL/IOERR: a second ROLLBACK would fail with
                # "cannot rollback - no transaction is active" and hide the real cause.
                if self._con.in_transaction:
                    try:
                        self._con.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(e, (sqlite3.OperationalError, OSError)) and not isinstance(e, StoreError):
                    raise self._explain(e, what, need) from e
                raise

    def _explain(self, e: BaseException, what: str, need: int = 0, action: str = "save") -> StoreError:
        """The ``StoreError`` a person can act on for a low-level failure while saving ``what``."""
        text = str(e).lower()
        head = f"Could not {action} {what}"
        if is_no_space(e):
            # the WAL grows by whole pages and is checkpointed into the database file: ask for slack
            return StoreFullError(no_space_message(self.data_dir, need + (1 << 20), what,
                                                   "Everything saved before is kept."))
        if "locked" in text or "busy" in text:
            return StoreBusyError(
                f"{head}: another program kept the database "
                f"{self.db_path} locked for more than {self._busy_timeout_s:g} s (another EARL Studio or a "
                "training job on the same data folder?). Everything saved before is kept; try again."
            )
        if "readonly" in text or "read-only" in text or "unable to open" in text or (
            isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT)
        ):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            return StoreUnavailableError(unavailable_message(self.data_dir, reason))
        if "disk i/o" in text or (isinstance(e, OSError) and e.errno == errno.EIO):
            return StoreUnavailableError(
                f"{head}: the disk holding {self.data_dir} reported an "
                f"I/O error ({e}). Check that the disk is still connected and healthy."
            )
        return StoreError(f"{head}: {e}")

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._con.execute("PRAGMA integrity_check").fetchone()[0])

    # -- images
    def image_path(self, image_hash: str) -> Path:
        return self.images_dir / image_hash[:2] / f"{image_hash}.png"

    def put_image(self, img: Image.Image | bytes) -> str:
        """Store an image (PIL or PNG bytes) once; returns its hash. File first, then the row."""
        data = png_bytes(img) if isinstance(img, Image.Image) else bytes(img)
        h = hashlib.sha256(data).hexdigest()
        path = self.image_path(h)
        if not path.exists():
            try:
                _atomic_write(path, data)
            except OSError as e:
                raise self._explain(e, "an image", len(data)) from e
        if isinstance(img, Image.Image):
            w, hgt = img.size
        else:
            with Image.open(io.BytesIO(data)) as im:
                w, hgt = im.size
        self._write(
            lambda con: con.execute(
                "INSERT OR IGNORE INTO images(hash, width, height, created_at) VALUES (?,?,?,?)",
                (h, w, hgt, time.time()),
            ),
            "an image",
        )
        return h

    def load_image(self, image_hash: str) -> Image.Image:
        path = self.image_path(image_hash)
        if not path.exists():
            raise StoreError(f"image {image_hash} is missing from {self.images_dir}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated or not an image at all
            raise StoreError(f"image {image_hash} in {self.images_dir} is damaged ({e})") from e

    def image_problem(self, image_hash: str, verify_hash: bool = False) -> str | None:
        """None when the stored image is there and readable, else why not (``"missing"``, ``"empty"``,
        ``"damaged: …"``). ``verify_hash`` also compares the bytes with their name (reads the file)."""
        path = self.image_path(image_hash)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            return f"unreadable: {e.strerror or e}"
        if size == 0:
            return "empty"
        try:
            if verify_hash:
                if hashlib.sha256(path.read_bytes()).hexdigest() != image_hash:
                    return "damaged: its bytes do not match its name"
            with Image.open(path) as im:
                im.verify()  # reads every chunk and checks the CRCs: a truncated PNG fails here
        except (OSError, SyntaxError, ValueError) as e:
            return f"damaged: {e}"
        return None

    # -- candidates
    def add_candidates(
        self,
        *,
        source: Image.Image | str,
        instruction: str,
        bundle_id: str,
        weights_hash: str,
        settings: dict[str, Any],
        candidates: Iterable[NewCandidate],
        parent_id: int | None = None,
        rater: str | None = None,
        edit_uid: str | None = None,
        original: Image.Image | str | None = None,
    ) -> list[int]:
        """Record finished candidates of one edit request; returns their ids (in the given order).

        ``settings`` must hold ``think``, ``temperature``, ``top_k``, ``top_p``; everything in it is
        kept (JSON). ``source`` is the image the model saw (PIL) or the hash of a stored one; ``original``
        the photo at its own size it was fitted from (None: the source itself). Each candidate's ``full``
        image is stored next to its model output, both losslessly.
        """
        for key in ("think", "temperature", "top_k", "top_p"):
            if key not in settings:
                raise StoreError(f"settings lacks {key!r}")
        if not instruction.strip():
            raise StoreError("instruction is empty")
        cands = list(candidates)
        what = f"the edit “{instruction[:60]}”"
        # an upper bound of what its PNGs and rows take (raw RGB pixels), for a disk-full message
        need = sum(im.width * im.height * 3 for im in [c.image for c in cands]
                   + [c.full for c in cands if c.full is not None]
                   + [im for im in (source, original) if isinstance(im, Image.Image)])
        need += sum(len(c.tokens) * 32 + len(c.reasoning) + 1024 for c in cands)  # JSON tokens + log-probs
        try:
            source_hash = source if isinstance(source, str) else self.put_image(source)
            original_hash = (source_hash if original is None
                             else original if isinstance(original, str) else self.put_image(original))
            # Image files (and their rows) land before the candidate rows that point at them.
            out_hashes = [self.put_image(c.image) for c in cands]
            full_hashes = [oh if c.full is None else self.put_image(c.full) for c, oh in zip(cands, out_hashes,
                                                                                           strict=True)]
        except StoreFullError as e:
            raise StoreFullError(no_space_message(self.data_dir, need + (1 << 20), what,
                                                  "Everything saved before is kept.")) from e
        edit_uid = edit_uid or uuid.uuid4().hex
        now = time.time()
        settings_json = json.dumps(settings, sort_keys=True)

        def insert(con: sqlite3.Connection) -> list[int]:
            ids = []
            for c, oh, fh in zip(cands, out_hashes, full_hashes, strict=True):
                if len(c.tokens) != len(c.logprobs):
                    raise StoreError(
                        f"candidate {c.idx}: {len(c.tokens)} tokens but {len(c.logprobs)} log-probs"
                    )
                cur = con.execute(
                    """INSERT INTO candidates(uid, edit_uid, idx, parent_id, source_hash, output_hash,
                       instruction, bundle_id, weights_hash, seed, think, temperature, top_k, top_p,
                       settings, grid_h, grid_w, tokens, logprobs, logprob_sum, reasoning, timings,
                       rater, created_at, original_hash, full_hash, render)
                       VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                    (
                        uuid.uuid4().hex,
                        edit_uid,
                        int(c.idx),
                        parent_id,
                        source_hash,
                        oh,
                        instruction,
                        bundle_id,
                        weights_hash,
                        int(c.seed),
                        int(bool(settings["think"])),
                        float(settings["temperature"]),
                        int(settings["top_k"]),
                        float(settings["top_p"]),
                        settings_json,
                        int(c.grid_shape[0]),
                        int(c.grid_shape[1]),
                        json.dumps([int(t) for t in c.tokens]),
                        json.dumps([float(x) for x in c.logprobs]),
                        float(sum(c.logprobs)),
                        c.reasoning,
                        json.dumps(c.timings),
                        rater,
                        now,
                        original_hash,
                        fh,
                        json.dumps(_jsonable(c.render), sort_keys=True, default=str),  # provenance must never lose the edit
                    ),
                )
                ids.append(int(cur.lastrowid))
            return ids

        return self._write(insert, what, need)

    @staticmethod
    def _candidate(row: sqlite3.Row) -> Candidate:
        return Candidate(
            id=row["id"],
            uid=row["uid"],
            edit_uid=row["edit_uid"],
            idx=row["idx"],
            parent_id=row["parent_id"],
            source_hash=row["source_hash"],
            output_hash=row["output_hash"],
            instruction=row["instruction"],
            bundle_id=row["bundle_id"],
            weights_hash=row["weights_hash"],
            seed=row["seed"],
            think=bool(row["think"]),
            temperature=row["temperature"],
            top_k=row["top_k"],
            top_p=row["top_p"],
            settings=json.loads(row["settings"]),
            grid_h=row["grid_h"],
            grid_w=row["grid_w"],
            tokens=json.loads(row["tokens"]),
            logprobs=json.loads(row["logprobs"]),
            logprob_sum=row["logprob_sum"],
            reasoning=row["reasoning"],
            timings=json.loads(row["timings"]),
            rater=row["rater"],
            created_at=row["created_at"],
            original_hash=row["original_hash"] or "",
            full_hash=row["full_hash"] or "",
            render=json.loads(row["render"]) if row["render"] else {},
        )

    def candidate(self, candidate_id: int) -> Candidate:
        with self._lock:
            row = self._con.execute("SELECT * FROM candidates WHERE id=?", (candidate_id,)).fetchone()
        if row is None:
            raise StoreError(f"no candidate with id {candidate_id}")
        return self._candidate(row)

    def candidates(self, ids: Iterable[int] | None = None) -> list[Candidate]:
        with self._lock:
            if ids is None:
                rows = self._con.execute("SELECT * FROM candidates ORDER BY id").fetchall()
            else:
                ids = [int(i) for i in ids]
                q = f"SELECT * FROM candidates WHERE id IN ({','.join('?' * len(ids))})"
                by_id = {r["id"]: r for r in self._con.execute(q, ids).fetchall()}
                missing = [i for i in ids if i not in by_id]
                if missing:
                    raise StoreError(f"no candidates with ids {missing}")
                rows = [by_id[i] for i in ids]
        return [self._candidate(r) for r in rows]

    def edit_candidates(self, edit_uid: str) -> list[Candidate]:
        with self._lock:
            rows = self._con.execute(
                "SELECT * FROM candidates WHERE edit_uid=? ORDER BY idx", (edit_uid,)
            ).fetchall()
        return [self._candidate(r) for r in rows]

    def recent_edits(self, limit: int = 50, offset: int = 0, rater: str | None = None,
                     include_ab_test: bool = False) -> list[dict[str, Any]]:
        """Newest edit requests first (those ``rater`` asked for, when given): edit_uid, instruction, n,
        source_hash, created_at, bundle_id, parent_id, n_ratings (the ratings that stand on its candidates,
        counted as ``standing_ratings`` counts them, so a changed mind counts once).

        The blind A/B's held-out test edits (``settings["ab_test"]``) are left out unless
        ``include_ab_test``: they judge models, are not the user's own edits, and are rated only in the
        blind A/B itself."""
        conds, args = [], []
        if rater is not None:
            conds.append("c.rater = ?")
            args.append(rater)
        if not include_ab_test:
            conds.append(f"NOT {AB_TEST_SQL.format('c')}")
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        with self._lock:
            rows = [dict(r) for r in self._con.execute(
                f"""SELECT c.edit_uid, MIN(c.instruction) AS instruction, COUNT(*) AS n,
                          MIN(c.source_hash) AS source_hash, MIN(c.created_at) AS created_at,
                          MIN(c.bundle_id) AS bundle_id, MIN(c.parent_id) AS parent_id
                   FROM candidates c {where} GROUP BY c.edit_uid ORDER BY MIN(c.id) DESC LIMIT ? OFFSET ?""",
                (*args, limit, offset),
            ).fetchall()]
        standing = self._standing_per_edit([r["edit_uid"] for r in rows])
        for r in rows:
            r["n_ratings"] = standing.get(r["edit_uid"], 0)
        return rows

    def _standing_per_edit(self, edit_uids: Sequence[str]) -> dict[str, int]:
        """How many ratings stand on each edit's candidates: one per (rater, kind, candidate set)."""
        if not edit_uids:
            return {}
        q = f"""SELECT DISTINCT c.edit_uid, r.id, r.rater, r.kind, r.candidate_ids FROM ratings r
                JOIN rating_candidates rc ON rc.rating_id = r.id JOIN candidates c ON c.id = rc.candidate_id
                WHERE c.edit_uid IN ({','.join('?' * len(edit_uids))})"""
        with self._lock:
            rows = self._con.execute(q, list(edit_uids)).fetchall()
        keys: dict[str, set[tuple]] = {}
        for uid, _, rater, kind, ids in rows:
            keys.setdefault(uid, set()).add(standing_key(rater, kind, json.loads(ids)))
        return {uid: len(k) for uid, k in keys.items()}

    def ab_test_ids(self, candidate_ids: Iterable[int]) -> set[int]:
        """Those of ``candidate_ids`` that a blind A/B round made (``settings["ab_test"]``): held-out test
        edits, rated only in the blind A/B."""
        ids = [int(i) for i in candidate_ids]
        if not ids:
            return set()
        q = f"SELECT id FROM candidates WHERE id IN ({','.join('?' * len(ids))}) AND {AB_TEST_SQL.format('candidates')}"
        with self._lock:
            return {int(r[0]) for r in self._con.execute(q, ids)}

    # -- ratings
    def add_rating(
        self,
        rater: str,
        kind: str,
        value: str | int,
        candidate_ids: Sequence[int],
        shown_order: Sequence[int] | None = None,
        *,
        created_at: float | None = None,
        uid: str | None = None,
    ) -> int:
        """Record one rating; returns its id. Validates kind/value/candidates; never overwrites.

        - ``thumb``: one candidate, value ``"up"``/``"down"`` (``True``/``1``/``-1`` accepted);
        - ``star``: one candidate, value 1..5;
        - ``pair``: ``candidate_ids=[A, B]``, value ``"A"``, ``"B"``, ``"tie"`` or ``"both_bad"``;
        - ``best_of_n``: the candidates shown (≥ 2), value = the chosen candidate's id.
        ``shown_order`` is the left→right order on screen (defaults to ``candidate_ids``).
        """
        rater = (rater or "").strip()
        if not rater:
            raise StoreError("rater is empty")
        ids = [int(i) for i in candidate_ids]
        if kind not in RATING_KINDS:
            raise StoreError(f"unknown rating kind {kind!r}; one of {RATING_KINDS}")
        if len(set(ids)) != len(ids):
            raise StoreError(f"candidate ids repeat: {ids}")
        v = self._normalize_value(kind, value, ids)
        order = [int(i) for i in (shown_order if shown_order is not None else ids)]
        if sorted(order) != sorted(ids):
            raise StoreError(f"shown_order {order} is not a permutation of candidate_ids {ids}")

        def insert(con: sqlite3.Connection) -> int:
            q = f"SELECT COUNT(*) FROM candidates WHERE id IN ({','.join('?' * len(ids))})"
            if con.execute(q, ids).fetchone()[0] != len(ids):
                raise StoreError(f"rating refers to unknown candidates {ids}")
            cur = con.execute(
                "INSERT INTO ratings(uid, rater, kind, value, candidate_ids, shown_order, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    uid or uuid.uuid4().hex,
                    rater,
                    kind,
                    v,
                    json.dumps(ids),
                    json.dumps(order),
                    time.time() if created_at is None else float(created_at),
                ),
            )
            rid = int(cur.lastrowid)
            con.executemany(
                "INSERT INTO rating_candidates(rating_id, candidate_id) VALUES (?,?)", [(rid, i) for i in ids]
            )
            return rid

        return self._write(insert, f"the {kind} rating", 4096)

    @staticmethod
    def _normalize_value(kind: str, value: str | int | bool, ids: list[int]) -> str:
        if kind == "thumb":
            if len(ids) != 1:
                raise StoreError("a thumb rates exactly one candidate")
            if value in ("up", True, 1, "1", "+1"):
                return "up"
            if value in ("down", False, -1, 0, "-1", "0"):
                return "down"
            raise StoreError(f"thumb value must be up/down, got {value!r}")
        if kind == "star":
            if len(ids) != 1:
                raise StoreError("a star rating rates exactly one candidate")
            try:
                f = float(value)
            except (TypeError, ValueError):
                f = float("nan")
            if f != f or f != int(f) or not 1 <= f <= 5:
                raise StoreError(f"star value must be a whole number 1..5, got {value!r}")
            return str(int(f))
        if kind == "pair":
            if len(ids) != 2:
                raise StoreError("a pair rating compares exactly two candidates [A, B]")
            if value not in PAIR_VALUES:
                raise StoreError(f"pair value must be one of {PAIR_VALUES}, got {value!r}")
            return str(value)
        # best_of_n
        if len(ids) < 2:
            raise StoreError("best-of-N needs at least two candidates")
        try:
            chosen = int(value)
        except (TypeError, ValueError):
            raise StoreError(f"best_of_n value must be a candidate id, got {value!r}") from None
        if chosen not in ids:
            raise StoreError(f"best_of_n choice {chosen} is not among the candidates {ids}")
        return str(chosen)

    @staticmethod
    def _rating(row: sqlite3.Row) -> Rating:
        return Rating(
            id=row["id"],
            uid=row["uid"],
            rater=row["rater"],
            kind=row["kind"],
            value=row["value"],
            candidate_ids=json.loads(row["candidate_ids"]),
            shown_order=json.loads(row["shown_order"]),
            created_at=row["created_at"],
        )

    def ratings(self, kind: str | None = None, candidate_id: int | None = None) -> list[Rating]:
        """Every rating row (history included), oldest first."""
        q, args = "SELECT r.* FROM ratings r", []
        conds = []
        if candidate_id is not None:
            q += " JOIN rating_candidates rc ON rc.rating_id = r.id"
            conds.append("rc.candidate_id = ?")
            args.append(int(candidate_id))
        if kind is not None:
            conds.append("r.kind = ?")
            args.append(kind)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY r.id"
        with self._lock:
            return [self._rating(r) for r in self._con.execute(q, args).fetchall()]

    def standing_ratings(self, kind: str | None = None, candidate_id: int | None = None) -> list[Rating]:
        """The ratings that stand, oldest first: the newest per (rater, kind, candidate set), so a rater
        who changes their mind counts once, with the newest value (older rows stay, as history)."""
        latest: dict[tuple[str, str, tuple[int, ...]], Rating] = {}
        for r in self.ratings(kind, candidate_id):
            latest[standing_key(r.rater, r.kind, r.candidate_ids)] = r
        return sorted(latest.values(), key=lambda r: r.id)

    def thumbs(self) -> list[Thumb]:
        """Latest thumb per (rater, candidate), with the candidate's exact tokens (KTO)."""
        rs = self.standing_ratings("thumb")
        cands = {c.id: c for c in self.candidates({r.candidate_ids[0] for r in rs})} if rs else {}
        return [Thumb(cands[r.candidate_ids[0]], r.value == "up", r.rater, r.id) for r in rs]

    def stars(self) -> list[Star]:
        """Latest 1–5 star rating per (rater, candidate)."""
        rs = self.standing_ratings("star")
        cands = {c.id: c for c in self.candidates({r.candidate_ids[0] for r in rs})} if rs else {}
        return [Star(cands[r.candidate_ids[0]], int(r.value), r.rater, r.id) for r in rs]

    def preference_pairs(self, include_best_of_n: bool = True) -> list[PreferencePair]:
        """Chosen/rejected pairs (DPO), latest rating per (rater, candidate set).

        From ``pair`` ratings with value A or B (ties and "both bad" carry no preference and are
        left out); from ``best_of_n`` (if asked) the chosen candidate against each other one shown.
        Only pairs whose two candidates share source image and instruction are returned. Blind A/B
        rounds (candidates with ``settings["ab_test"]``) are left out: they judge held-out photos, and
        training on them would teach the test and grade the next model on it.
        """
        rs = self.standing_ratings("pair") + (self.standing_ratings("best_of_n") if include_best_of_n else [])
        needed = {i for r in rs for i in r.candidate_ids}
        cands = {c.id: c for c in self.candidates(needed)} if needed else {}
        out: list[PreferencePair] = []
        for r in sorted(rs, key=lambda r: r.id):
            if r.kind == "pair":
                if r.value not in ("A", "B"):
                    continue
                a, b = r.candidate_ids
                pairs = [(a, b)] if r.value == "A" else [(b, a)]
            else:
                chosen = int(r.value)
                pairs = [(chosen, o) for o in r.candidate_ids if o != chosen]
            for w, lo in pairs:
                cw, cl = cands[w], cands[lo]
                if (cw.source_hash, cw.instruction) != (cl.source_hash, cl.instruction):
                    continue
                if cw.settings.get("ab_test") or cl.settings.get("ab_test"):
                    continue
                out.append(PreferencePair(cw, cl, r.rater, r.id, r.kind))
        return out

    def counts(self) -> dict[str, int]:
        """What has been collected: edits, candidates, ratings, raters (every row in the store, what an
        export writes); the ratings that can train (thumbs up/down, stars, A/B decisions and ties, best_of_n,
        the preference pairs A/B and best-of-N give, and ``graded_pairs``: those that thumbs and stars of one
        edit's candidates give); and the blind A/B, which judges models and never trains them: its rounds
        (``ab_rounds``) and the held-out test edits and candidates it made (``ab_edits``,
        ``ab_candidates``; among ``edits`` and ``candidates``, so subtract them for the user's own)."""
        with self._lock:
            one = lambda q: int(self._con.execute(q).fetchone()[0])  # noqa: E731
            c = {
                "edits": one("SELECT COUNT(DISTINCT edit_uid) FROM candidates"),
                "candidates": one("SELECT COUNT(*) FROM candidates"),
                "ratings": one("SELECT COUNT(*) FROM ratings"),
                "raters": one("SELECT COUNT(DISTINCT rater) FROM ratings"),
            }
        # Same rule as preference_pairs(), on two light columns instead of whole rows with tokens
        # (this runs after every click in the UI).
        with self._lock:
            rows = self._con.execute("SELECT id, source_hash, instruction, json_extract(settings, '$.ab_test'), "
                                     "edit_uid FROM candidates").fetchall()
        # a blind A/B round's candidates are never training data (they are held-out photos): its
        # decisions are counted apart, as "ab_rounds", and never among the ratings that train
        key = {r[0]: (r[1], r[2]) if not r[3] else ("ab_test", r[0]) for r in rows}
        blind = {r[0] for r in rows if r[3]}
        c["ab_candidates"] = len(blind)
        c["ab_edits"] = len({r[4] for r in rows if r[3]})
        is_blind = lambda rt: any(i in blind for i in rt.candidate_ids)  # noqa: E731
        thumbs = [t for t in self.standing_ratings("thumb") if not is_blind(t)]
        c["thumbs_up"] = sum(t.value == "up" for t in thumbs)
        c["thumbs_down"] = sum(t.value == "down" for t in thumbs)
        c["stars"] = sum(not is_blind(t) for t in self.standing_ratings("star"))
        all_pairs = self.standing_ratings("pair")
        pair_rs = [r for r in all_pairs if not is_blind(r)]
        c["ab_rounds"] = len(all_pairs) - len(pair_rs)
        c["pairs_decided"] = sum(r.value in ("A", "B") for r in pair_rs)
        c["pairs_undecided"] = len(pair_rs) - c["pairs_decided"]
        bon_rs = [r for r in self.standing_ratings("best_of_n") if not is_blind(r)]
        c["best_of_n"] = len(bon_rs)
        n = 0
        for r in pair_rs:
            n += r.value in ("A", "B") and key[r.candidate_ids[0]] == key[r.candidate_ids[1]]
        for r in bon_rs:
            n += sum(key[o] == key[int(r.value)] for o in r.candidate_ids if o != int(r.value))
        c["preference_pairs"] = n
        # the pairs per-candidate grades imply (feedback.pairs.graded_pairs): within one rater's thumbs, or
        # stars, of one photo and instruction, each two candidates graded differently
        graded: dict[tuple, list[str]] = {}
        for kind, rs in (("thumb", thumbs), ("star", self.standing_ratings("star"))):
            for r in rs:
                if not is_blind(r):
                    graded.setdefault((kind, r.rater, *key[r.candidate_ids[0]]), []).append(r.value)
        c["graded_pairs"] = sum(math.comb(len(g), 2) - sum(math.comb(g.count(v), 2) for v in set(g))
                                for g in graded.values())
        return c

    # -- history tree
    def lineage(self, candidate_id: int) -> list[Candidate]:
        """The chain root → … → candidate (each one's source was the previous one's output)."""
        chain: list[Candidate] = []
        seen: set[int] = set()
        cid: int | None = candidate_id
        while cid is not None and cid not in seen:
            seen.add(cid)
            c = self.candidate(cid)
            chain.append(c)
            cid = c.parent_id
        return chain[::-1]

    def children(self, candidate_id: int) -> list[Candidate]:
        with self._lock:
            rows = self._con.execute(
                "SELECT * FROM candidates WHERE parent_id=? ORDER BY id", (candidate_id,)
            ).fetchall()
        return [self._candidate(r) for r in rows]

    # -- export / import
    def export_dataset(self, folder: str | Path) -> Path:
        """Write a Hugging Face ``datasets`` folder: ``candidates`` and ``ratings``, images embedded (PNG
        bytes) — opened by ``datasets.load_from_disk(folder)`` and ``datasets.load_dataset(folder, name)``."""
        from feedback.export import export_store

        return export_store(self, Path(folder))

    def import_dataset(self, folder: str | Path) -> dict[str, int]:
        """Merge an exported folder into this store (idempotent: rows are matched by ``uid``).
        Returns how many candidates and ratings were new."""
        from feedback.export import import_store

        return import_store(self, Path(folder))

    def _insert_raw_candidate(self, con: sqlite3.Connection, row: dict[str, Any]) -> int | None:
        """Used by import: insert a candidate row as-is unless its uid exists. Returns the local id."""
        hit = con.execute("SELECT id FROM candidates WHERE uid=?", (row["uid"],)).fetchone()
        if hit is not None:
            return None
        cols = list(row)
        cur = con.execute(
            f"INSERT INTO candidates({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
            [row[c] for c in cols],
        )
        return int(cur.lastrowid)

    def id_for_uid(self, uid: str) -> int | None:
        with self._lock:
            hit = self._con.execute("SELECT id FROM candidates WHERE uid=?", (uid,)).fetchone()
        return None if hit is None else int(hit[0])

    def rating_uid_exists(self, uid: str) -> bool:
        with self._lock:
            return self._con.execute("SELECT 1 FROM ratings WHERE uid=?", (uid,)).fetchone() is not None

    # -- checking for files lost under the store
    def check(self, verify_hash: bool = True, prune: bool = False) -> CheckReport:
        """Find stored images that are missing or damaged, the candidates and ratings that depend on them,
        and temp files left by killed writes. ``prune``: delete those temp files, move damaged image files
        to ``<data>/damaged/`` (storing the same image again then heals it), and remove the affected
        candidates and ratings after writing them to ``<data>/damaged/pruned-<time>.json``."""
        with self._lock:
            hashes = {r[0] for r in self._con.execute("SELECT hash FROM images")}
            rows = self._con.execute(
                "SELECT id, source_hash, output_hash, original_hash, full_hash FROM candidates").fetchall()
        hashes |= {h for r in rows for h in r[1:] if h}
        problems = {h: p for h in sorted(hashes) if (p := self.image_problem(h, verify_hash)) is not None}
        cand_ids = sorted(r[0] for r in rows if any(h in problems for h in r[1:] if h))
        rating_ids: list[int] = []
        if cand_ids:
            q = f"SELECT DISTINCT rating_id FROM rating_candidates WHERE candidate_id IN ({','.join('?' * len(cand_ids))})"
            with self._lock:
                rating_ids = sorted(r[0] for r in self._con.execute(q, cand_ids))
        temps = sorted(self.images_dir.rglob(".tmp-*"))
        report = CheckReport(self.data_dir, len(hashes), problems, cand_ids, rating_ids, temps)
        if prune:
            self._prune(report)
        return report

    def _prune(self, report: CheckReport) -> None:
        damaged = self.data_dir / "damaged"
        for t in report.temp_files:
            t.unlink(missing_ok=True)
        if not report.problems:
            return
        damaged.mkdir(exist_ok=True)
        for h, why in report.problems.items():
            if why != "missing" and self.image_path(h).exists():
                os.replace(self.image_path(h), damaged / f"{h}.png")
        cids, rids = report.candidates, report.ratings
        with self._lock:
            cand_rows = [dict(r) for r in self._con.execute(
                f"SELECT * FROM candidates WHERE id IN ({','.join('?' * len(cids))})", cids)] if cids else []
            rating_rows = [dict(r) for r in self._con.execute(
                f"SELECT * FROM ratings WHERE id IN ({','.join('?' * len(rids))})", rids)] if rids else []
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = damaged / f"pruned-{stamp}-{uuid.uuid4().hex[:6]}.json"
        backup.write_text(json.dumps({"problems": report.problems, "candidates": cand_rows,
                                      "ratings": rating_rows}, indent=1))
        report.backup = backup

        def delete(con: sqlite3.Connection) -> None:
            for rid in rids:
                con.execute("DELETE FROM rating_candidates WHERE rating_id=?", (rid,))
                con.execute("DELETE FROM ratings WHERE id=?", (rid,))
            for cid in cids:  # a kept child of a pruned candidate loses only its link (kept in the backup)
                con.execute("UPDATE candidates SET parent_id=NULL WHERE parent_id=?", (cid,))
            for cid in cids:
                con.execute("DELETE FROM candidates WHERE id=?", (cid,))
            for h in report.problems:
                con.execute("DELETE FROM images WHERE hash=?", (h,))

        self._write(delete, "the pruning")
        report.pruned = True


@dataclass
class CheckReport:
    """What ``Store.check`` found (and, with ``prune``, removed)."""

    data_dir: Path
    images_checked: int
    problems: dict[str, str]  # image hash -> "missing" / "empty" / "damaged: …"
    candidates: list[int]  # candidate ids one of whose images (source, output, original, full) has a problem
    ratings: list[int]  # rating ids that touch those candidates
    temp_files: list[Path]  # leftovers of writes that were killed (never referenced by a row)
    pruned: bool = False
    backup: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not self.temp_files

    def text(self) -> str:
        """The report as a person reads it (the CLI prints this)."""
        lines = [f"{self.data_dir}: {self.images_checked} stored images checked"]
        if self.ok:
            return lines[0] + "; all present and readable."
        for h, why in list(self.problems.items())[:50]:
            lines.append(f"  image {h[:16]}… {why}")
        if len(self.problems) > 50:
            lines.append(f"  … and {len(self.problems) - 50} more")
        lines.append(f"{len(self.problems)} image(s) missing or damaged; {len(self.candidates)} candidate(s) and "
                     f"{len(self.ratings)} rating(s) depend on them; {len(self.temp_files)} leftover temp file(s).")
        if self.pruned:
            lines.append(f"Pruned: those candidates and ratings are removed (their rows are kept in {self.backup}); "
                         "damaged files moved to damaged/; temp files deleted.")
        else:
            lines.append(f"Run `{CHECK_COMMAND} --data {self.data_dir} --prune` to remove them "
                         "(their rows are written to damaged/ first), or restore the files from a backup.")
        return "\n".join(lines)


# The module as `python -m` names it (it stays right if this file moves to another package).
CHECK_COMMAND = f"python -m {__spec__.name if __spec__ is not None else __name__} check"


def main(argv: Sequence[str] | None = None) -> int:
    """``check --data DIR [--prune] [--quick]``: exit 0 when the store is sound (or was pruned), 1 when
    problems remain, 2 when the data folder cannot be opened."""
    import argparse

    ap = argparse.ArgumentParser(prog=CHECK_COMMAND.removesuffix(" check"),
                                 description="check the feedback store for missing or damaged images")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="report stored images that are missing or damaged (and prune them)")
    c.add_argument("--data", type=Path, default=None, help="data folder (default: ~/.earl-studio)")
    c.add_argument("--prune", action="store_true",
                   help="remove the candidates and ratings whose images are lost (rows backed up to damaged/)")
    c.add_argument("--quick", action="store_true", help="do not re-hash every image (presence and PNG check only)")
    a = ap.parse_args(argv)
    data = (a.data or default_data_dir()).expanduser()
    if not (data / DB_NAME).is_file():
        print(f"error: {data} holds no feedback store ({DB_NAME}); pass the folder with --data DIR", file=sys.stderr)
        return 2
    try:
        with Store(data) as store:
            report = store.check(verify_hash=not a.quick, prune=a.prune)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.text())
    return 0 if report.ok or report.pruned else 1


if __name__ == "__main__":
    sys.exit(main())
