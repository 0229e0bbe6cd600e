"""Export the feedback store to a Hugging Face ``datasets`` folder (Arrow, images embedded) and back.

The folder is a ``DatasetDict`` saved with ``save_to_disk`` whose card declares each part as a config, so
both ``datasets.load_from_disk(folder)["ratings"]`` and ``datasets.load_dataset(folder, "ratings",
split="train")`` open it::

    README.md, dataset_dict.json            dataset card (its YAML header declares the two configs), splits
    candidates/data-00000-of-00001.arrow    one row per candidate, source/output/original/full images as PNG bytes
    ratings/data-00000-of-00001.arrow       one row per rating; candidates referred to by uid

Rows carry their ``uid``, so importing is idempotent and ids can differ between stores.

A candidate whose stored image is missing or damaged is left out (with the ratings that refer to it)
instead of stopping the export; what was left out, and why, is listed in ``skipped.json``. Running
out of disk space ends in a message naming the folder and the space needed; the shards are written
to temp files and renamed, so an export cut short never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from feedback.store import Store

CARD = """---
configs:
- config_name: candidates
  data_files: candidates/*.arrow
- config_name: ratings
  data_files: ratings/*.arrow
---
# EARL Studio feedback export

Exported by EARL Studio (`Store.export_dataset`). `candidates`: one row per generated candidate, with
the source image the model saw, the output, the photo at its own size (`original_image`) and the edit
rendered at that size (`full_image`, with its provenance in `render`; equal to the output where the photo
is no larger than the model's picture), the instruction, bundle id + weights hash, seed and every
sampling setting, the exact generated token ids and their log-probs, reasoning text and timings;
`parent_uid` links a candidate to the result it was edited from. `ratings`: thumb (up/down), star (1–5),
pair (A/B/tie/both_bad over `candidate_uids` = [A, B]) and best_of_n (value = chosen candidate uid),
with `shown_order_uids` the left-to-right order on screen.
"""

CANDIDATE_FEATURES = datasets.Features(
    {
        "uid": datasets.Value("string"),
        "edit_uid": datasets.Value("string"),
        "idx": datasets.Value("int32"),
        "parent_uid": datasets.Value("string"),
        "source_image": datasets.Image(),
        "output_image": datasets.Image(),
        "source_hash": datasets.Value("string"),
        "output_hash": datasets.Value("string"),
        "original_image": datasets.Image(),
        "full_image": datasets.Image(),
        "original_hash": datasets.Value("string"),
        "full_hash": datasets.Value("string"),
        "render": datasets.Value("string"),  # JSON: how full_image was made ({} when it is the output)
        "instruction": datasets.Value("string"),
        "bundle_id": datasets.Value("string"),
        "weights_hash": datasets.Value("string"),
        "seed": datasets.Value("int64"),
        "think": datasets.Value("bool"),
        "temperature": datasets.Value("float64"),
        "top_k": datasets.Value("int64"),
        "top_p": datasets.Value("float64"),
        "settings": datasets.Value("string"),  # JSON
        "grid_h": datasets.Value("int32"),
        "grid_w": datasets.Value("int32"),
        "tokens": datasets.List(datasets.Value("int64")),
        "logprobs": datasets.List(datasets.Value("float64")),
        "logprob_sum": datasets.Value("float64"),
        "reasoning": datasets.Value("string"),
        "timings": datasets.Value("string"),  # JSON
        "rater": datasets.Value("string"),
        "created_at": datasets.Value("float64"),
    }
)

RATING_FEATURES = datasets.Features(
    {
        "uid": datasets.Value("string"),
        "rater": datasets.Value("string"),
        "kind": datasets.Value("string"),
        "value": datasets.Value("string"),
        "candidate_uids": datasets.List(datasets.Value("string")),
        "shown_order_uids": datasets.List(datasets.Value("string")),
        "created_at": datasets.Value("float64"),
    }
)

SKIPPED = "skipped.json"


def _image_bytes(store: Store, image_hash: str) -> tuple[bytes | None, str]:
    """The stored PNG's bytes, or None and why they cannot be exported (missing, or not what its name says)."""
    try:
        data = store.image_path(image_hash).read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if hashlib.sha256(data).hexdigest() != image_hash:
        return None, "damaged (its bytes do not match its name)" if data else "empty"
    return data, ""


def read_skipped(folder: Path) -> list[dict[str, Any]]:
    """What an export left out (``[{"kind": "candidate"|"rating", "id", "uid", "why"}]``), [] if nothing."""
    f = Path(folder) / SKIPPED
    return json.loads(f.read_text()) if f.is_file() else []


def export_store(store: Store, folder: Path) -> Path:
    from engine.diskspace import is_no_space
    from feedback.store import StoreFullError

    created = not folder.exists()
    try:
        return _export(store, folder)
    except OSError as e:
        if not is_no_space(e):
            raise
        if created:  # half an export is worse than none: it loads, and silently lacks the ratings
            shutil.rmtree(folder, ignore_errors=True)
        # What the images and tokens take, plus room for the parquet encoding: what to free before retrying.
        need = sum(store.image_path(h).stat().st_size for c in store.candidates()
                   for h in {c.source_hash, c.output_hash, c.original_hash, c.full_hash}
                   if store.image_path(h).exists())
        for tmp in folder.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        from engine.diskspace import no_space_message

        raise StoreFullError(no_space_message(folder, need * 2, "the dataset export",
                                              "The feedback store itself is untouched.")) from e


def _export(store: Store, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cands = store.candidates()
    uid_of = {c.id: c.uid for c in cands}
    rows: dict[str, list[Any]] = {k: [] for k in CANDIDATE_FEATURES}
    skipped: list[dict[str, Any]] = []
    left_out: set[int] = set()
    for c in cands:
        images = {}
        for what, h in (("source", c.source_hash), ("output", c.output_hash), ("original", c.original_hash),
                        ("full", c.full_hash)):
            data, why = _image_bytes(store, h)
            if data is None:
                skipped.append({"kind": "candidate", "id": c.id, "uid": c.uid, "why": f"{what} image {h[:12]}… {why}"})
                left_out.add(c.id)
                break
            images[what] = data
        if c.id in left_out:
            continue
        rec = {
            "uid": c.uid,
            "edit_uid": c.edit_uid,
            "idx": c.idx,
            "parent_uid": uid_of.get(c.parent_id) if c.parent_id is not None else None,
            "source_image": {"bytes": images["source"], "path": None},
            "output_image": {"bytes": images["output"], "path": None},
            "source_hash": c.source_hash,
            "output_hash": c.output_hash,
            "original_image": {"bytes": images["original"], "path": None},
            "full_image": {"bytes": images["full"], "path": None},
            "original_hash": c.original_hash,
            "full_hash": c.full_hash,
            "render": json.dumps(c.render, sort_keys=True),
            "instruction": c.instruction,
            "bundle_id": c.bundle_id,
            "weights_hash": c.weights_hash,
            "seed": c.seed,
            "think": c.think,
            "temperature": c.temperature,
            "top_k": c.top_k,
            "top_p": c.top_p,
            "settings": json.dumps(c.settings, sort_keys=True),
            "grid_h": c.grid_h,
            "grid_w": c.grid_w,
            "tokens": c.tokens,
            "logprobs": c.logprobs,
            "logprob_sum": c.logprob_sum,
            "reasoning": c.reasoning,
            "timings": json.dumps(c.timings),
            "rater": c.rater,
            "created_at": c.created_at,
        }
        for k, v in rec.items():
            rows[k].append(v)
    ratings = store.ratings()
    rrows: dict[str, list[Any]] = {k: [] for k in RATING_FEATURES}
    for r in ratings:
        lost = sorted(set(r.candidate_ids) & left_out)
        if lost:  # a rating is only meaningful with every candidate it compared
            skipped.append({"kind": "rating", "id": r.id, "uid": r.uid,
                            "why": f"refers to candidate(s) {lost}, left out above"})
            continue
        value = uid_of[int(r.value)] if r.kind == "best_of_n" else r.value
        rec = {
            "uid": r.uid,
            "rater": r.rater,
            "kind": r.kind,
            "value": value,
            "candidate_uids": [uid_of[i] for i in r.candidate_ids],
            "shown_order_uids": [uid_of[i] for i in r.shown_order],
            "created_at": r.created_at,
        }
        for k, v in rec.items():
            rrows[k].append(v)
    parts = datasets.DatasetDict({"candidates": datasets.Dataset.from_dict(rows, features=CANDIDATE_FEATURES),
                                  "ratings": datasets.Dataset.from_dict(rrows, features=RATING_FEATURES)})
    # an empty part would be saved with no shard at all, which load_from_disk cannot open: give it one
    empty = {name: 1 for name, part in parts.items() if len(part) == 0}
    parts.save_to_disk(str(folder), num_shards=empty or None)
    (folder / "README.md").write_text(CARD)
    if skipped:
        (folder / SKIPPED).write_text(json.dumps(skipped, indent=1))
    else:
        (folder / SKIPPED).unlink(missing_ok=True)
    return folder


def _read(folder: Path, name: str) -> list[dict[str, Any]]:
    # pyarrow directly: no datasets cache is written, and image columns arrive as raw PNG bytes.
    # Exports are Arrow streams; earlier ones were parquet files.
    files = sorted((folder / name).glob("*.arrow")) or sorted((folder / name).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"{folder / name} holds no data files — is {folder} an EARL Studio export?"
        )
    out: list[dict[str, Any]] = []
    for f in files:
        if f.suffix == ".arrow":
            with pa.memory_map(str(f)) as src:
                out.extend(pa.ipc.open_stream(src).read_all().to_pylist())
        else:
            out.extend(pq.read_table(f).to_pylist())
    return out


def import_store(store: Store, folder: Path) -> dict[str, int]:
    cand_rows = _read(folder, "candidates")
    rating_rows = _read(folder, "ratings")
    new_c = new_r = 0
    # Images first (files + rows), then candidates — parents before children — then ratings. Exports made
    # before full-resolution results lack the original/full columns: their rows keep them NULL (read as
    # the source and the output).
    images = (("source_image", "source_hash"), ("output_image", "output_hash"), ("original_image", "original_hash"),
              ("full_image", "full_hash"))
    for row in cand_rows:
        for col, hcol in images:
            if row.get(col) is None:
                continue
            data = row[col]["bytes"]
            h = hashlib.sha256(data).hexdigest()
            if h != row[hcol]:
                raise ValueError(f"candidate {row['uid']}: {col} bytes do not match {hcol} {row[hcol]}")
            store.put_image(data)
    by_uid = {r["uid"]: r for r in cand_rows}
    done: set[str] = set()

    def insert(uid: str, stack: tuple[str, ...] = ()) -> None:
        nonlocal new_c
        if uid in done:
            return
        row = by_uid[uid]
        parent = row["parent_uid"]
        if parent is not None and parent in by_uid and parent not in stack:
            insert(parent, stack + (uid,))
        parent_id = store.id_for_uid(parent) if parent is not None else None
        rec = {k: v for k, v in row.items() if k not in [col for col, _ in images] + ["parent_uid"]}
        rec["parent_id"] = parent_id
        rec["think"] = int(bool(rec["think"]))
        rec["tokens"] = json.dumps([int(t) for t in rec["tokens"]])
        rec["logprobs"] = json.dumps([float(x) for x in rec["logprobs"]])
        if store._write(lambda con: store._insert_raw_candidate(con, rec)) is not None:
            new_c += 1
        done.add(uid)

    for uid in by_uid:
        insert(uid)
    for r in rating_rows:
        if store.rating_uid_exists(r["uid"]):
            continue
        ids = []
        for u in r["candidate_uids"]:
            cid = store.id_for_uid(u)
            if cid is None:
                raise ValueError(f"rating {r['uid']} refers to candidate {u}, which is not in the export")
            ids.append(cid)
        order = [store.id_for_uid(u) for u in r["shown_order_uids"]]
        value = store.id_for_uid(r["value"]) if r["kind"] == "best_of_n" else r["value"]
        store.add_rating(
            rater=r["rater"],
            kind=r["kind"],
            value=value,
            candidate_ids=ids,
            shown_order=order,
            created_at=r["created_at"],
            uid=r["uid"],
        )
        new_r += 1
    return {"candidates": new_c, "ratings": new_r}
