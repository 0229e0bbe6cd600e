"""The edit history as a tree: sources → edits → candidates → (continued) edits → …

Built from the store's ``parent_id`` links, restricted to the edits a session made (or reviewed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from feedback.store import Candidate, Store

EM = "\u2003"  # em space


def _short(text: str, n: int = 38) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def tree_choices(store: Store, edit_uids: Sequence[str]) -> list[tuple[str, str]]:
    """Dropdown choices ``(label, value)`` in tree order. Values: ``src:<hash>`` for an uploaded
    photo, ``cand:<id>`` for a result. Labels are indented with box-drawing characters."""
    cands: list[Candidate] = []
    for uid in dict.fromkeys(edit_uids):
        cands.extend(store.edit_candidates(uid))
    if not cands:
        return []
    by_id = {c.id: c for c in cands}
    n_of = {c.edit_uid: sum(x.edit_uid == c.edit_uid for x in cands) for c in cands}
    children: dict[str, list[Candidate]] = defaultdict(list)
    roots: list[str] = []
    for c in sorted(cands, key=lambda c: c.id):
        if c.parent_id is not None and c.parent_id in by_id:
            key = f"cand:{c.parent_id}"
        elif c.parent_id is not None:
            key = f"cand:{c.parent_id}"  # parent outside this session: show it as a root
            if key not in roots:
                roots.append(key)
        else:
            key = f"src:{c.source_hash}"
            if key not in roots:
                roots.append(key)
        children[key].append(c)

    out: list[tuple[str, str]] = []

    def walk(key: str, depth: int) -> None:
        for c in children.get(key, []):
            # em spaces: HTML keeps them, so the indentation shows the tree
            label = f"{EM * (depth - 1)}└ #{c.id} “{_short(c.instruction)}” · {c.idx + 1} of {n_of[c.edit_uid]}"
            out.append((label, f"cand:{c.id}"))
            walk(f"cand:{c.id}", depth + 1)

    for n, root in enumerate(roots, 1):
        if root.startswith("src:"):
            out.append((f"📷 photo {n} ({root[4:12]})", root))
        else:
            out.append((f"📷 result #{root[5:]} (earlier session)", root))
        walk(root, 1)
    return out


def breadcrumbs(store: Store, candidate_id: int | None) -> str:
    """"photo → “make it grey” #3 → “flip it” #9" for the current source."""
    if candidate_id is None:
        return "📷 original photo"
    parts = ["📷 photo"] + [f"“{_short(c.instruction, 24)}” #{c.id}" for c in store.lineage(candidate_id)]
    return " → ".join(parts)
