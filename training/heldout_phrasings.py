"""The held-out phrasing set: everyday instructions written apart from the training templates.

``training/data/heldout_phrasings.jsonl`` holds one instruction a line, the way people type them (politeness,
typos, slang, synonyms, other word orders), each tied to an edit kind and the parameters it fixes::

    {"id": "hp001", "kind": "grayscale", "text": "I'd like it in black and white", "params": {},
     "clause": false, "tags": ["polite"]}

- ``params`` are the sample parameters the text commits to (``{"dir": "clockwise"}`` for a quarter turn,
  ``{"where": "top left"}`` for a zoom, ``{"steps": 2}`` for a two-step composition's joiner); a text
  applies to a suite sample only when they match.
- Object kinds name their object through the suite's own slots (``{obj}``, ``{a_obj}``, ``{pos}``, ``{posn}``,
  ``{colour}``, ``{new}``, ``{bigger}``, ``{grow}``: ``Kind.fields``), so a sample of any object fits.
- ``clause`` marks a text that reads as one step inside a composition; a composition sample is phrased with
  one of the joiners (kind ``compose``: ``{0}``, ``{1}``, ``{2}``) around held-out clauses of its steps.

Nothing here may reach training: ``tests/test_heldout_phrasings.py`` checks the set against every training
template and the richer training generator (``training.rich_language``), which also drops any draw that
equals one of these texts. ``instruction(sample)`` picks a sample's phrasing from its id alone, so a run on
a subset phrases each sample as a full run does. ``python -m training.eval --phrasings heldout`` uses it.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from pathlib import Path

PATH = Path(__file__).resolve().parent / "data" / "heldout_phrasings.jsonl"
SLOTS = ("obj", "Obj", "a_obj", "pos", "posn", "colour", "new", "bigger", "grow", "dir", "where")
_SPLIT_OFFSET = {"test": 0, "val": 10}


@functools.lru_cache(maxsize=1)
def load() -> tuple[dict, ...]:
    """Every entry of the set, in file order (cached; treat as read-only)."""
    rows = [json.loads(line) for line in PATH.read_text().splitlines() if line.strip()]
    return tuple(rows)


def normalise(text: str) -> str:
    """Lower case, words and slot names only: two texts that differ in case, spacing or punctuation match."""
    text = re.sub(r"\{(\w+)\}", lambda m: f" slot{m.group(1).lower()} ", text.lower())
    return " ".join(re.findall(r"[a-z0-9&°]+", text))


def texts() -> set[str]:
    """The normalised texts of the whole set (what training must never draw)."""
    return {normalise(r["text"]) for r in load()}


def _matches(entry: dict, kind: str, params: dict) -> bool:
    if entry["kind"] != kind:
        return False
    want = entry.get("params") or {}
    if kind == "compose":
        return want.get("steps") == len(params["steps"])
    return all(params.get(k) == v for k, v in want.items())


def pool(kind: str, params: dict, clause: bool = False) -> list[dict]:
    """The entries that can phrase an edit of ``kind`` with ``params`` (``clause``: only composition steps)."""
    return [r for r in load() if _matches(r, kind, params) and (r["clause"] or not clause)]


def _index(sample_id: str) -> int:
    m = re.search(r"-(\d+)$", sample_id)
    if m is None:
        return zlib.crc32(sample_id.encode())
    split = sample_id.split("-", 1)[0]
    return int(m.group(1)) + _SPLIT_OFFSET.get(split, 0)


def _fields(kind: str, params: dict) -> dict[str, str]:
    from training.data.edits import KINDS

    f = dict(KINDS[kind].fields(params))
    if "obj" in f:
        f["Obj"] = f["obj"][:1].upper() + f["obj"][1:]
    return f


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def phrase(kind: str, params: dict, index: int, clause: bool = False) -> str:
    """The held-out text number ``index`` (modulo the pool) for an edit of ``kind``, slots filled."""
    if kind == "compose":
        steps = params["steps"]
        joiners = pool("compose", params)
        parts = [phrase(s["kind"], s["params"], index * 3 + 7 * i + 1, clause=True) for i, s in enumerate(steps)]
        return _sentence(joiners[index % len(joiners)]["text"].format(*parts))
    cands = pool(kind, params, clause)
    if not cands:
        raise ValueError(f"the held-out set has no {'clause ' if clause else ''}phrasing for {kind} {params}")
    text = cands[index % len(cands)]["text"].format(**_fields(kind, params))
    return text if clause else _sentence(text)


def instruction(sample: dict) -> str:
    """The held-out instruction for a suite sample (``id``, ``kind``, ``params``): fixed by its id."""
    return phrase(sample["kind"], sample["params"], _index(sample["id"]))
