"""The edit history: this page's tree (photos → edits → results continued from → their edits → …), the
breadcrumb of the current source, and one-line labels of earlier edits.

Built from the store's ``parent_id`` links. An edit is one row (its candidates are in the results
panel); a result is a row of its own only when it was continued from, or is the current source, so the
tree stays as short as the path the user actually took."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from feedback.store import Candidate, Store

EM = "\u2003"  # em space: HTML keeps it, so the indentation shows the tree


def _short(text: str, n: int = 38) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def tree_choices(store: Store, edit_uids: Sequence[str], current: int | None = None) -> list[tuple[str, str]]:
    """Radio choices ``(label, value)`` in tree order for the edits ``edit_uids`` of one page.

    Values: ``src:<hash>`` for an uploaded photo (its stored full-size file), ``edit:<uid>`` for an edit (its results),
    ``cand:<id>`` for a result that was continued from or is the ``current`` source."""
    edits: dict[str, list[Candidate]] = {}
    for uid in dict.fromkeys(edit_uids):
        cands = store.edit_candidates(uid)
        if cands:
            edits[uid] = cands
    if not edits and current is None:
        return []
    # results shown as nodes: the parents of this page's edits, and the current source
    anchors = {cs[0].parent_id for cs in edits.values() if cs[0].parent_id is not None}
    if current is not None:
        anchors.add(int(current))
    shown = {c.id: c for c in store.candidates(sorted(anchors))} if anchors else {}
    children: dict[str, list[tuple[str, str]]] = defaultdict(list)  # node → [(kind, key)] in order
    roots: list[str] = []

    def attach(node: str, parent: str | None) -> None:
        if parent is None:
            if node not in roots:
                roots.append(node)
        elif node not in [k for _, k in children[parent]]:
            children[parent].append(("node", node))

    for c in sorted(shown.values(), key=lambda c: c.id):
        attach(f"cand:{c.id}", f"edit:{c.edit_uid}" if c.edit_uid in edits else None)
    for uid, cs in sorted(edits.items(), key=lambda kv: kv[1][0].id):
        first = cs[0]
        if first.parent_id is not None:
            attach(f"edit:{uid}", f"cand:{first.parent_id}")
        else:  # the photo as uploaded (its full size), not the model's small copy of it
            photo = first.original_hash
            attach(f"src:{photo}", None)
            attach(f"edit:{uid}", f"src:{photo}")

    photo_no = {k: i for i, k in enumerate((r for r in roots if r.startswith("src:")), 1)}
    out: list[tuple[str, str]] = []

    def label(node: str) -> str:
        kind, _, key = node.partition(":")
        if kind == "src":
            return f"Photo {photo_no[node]} ({key[:8]})"
        if kind == "edit":
            cs = edits[key]
            return f"“{_short(cs[0].instruction)}” · {_plural(len(cs), 'result')}"
        c = shown[int(key)]  # numbered as its edit's gallery numbers it
        if c.edit_uid in edits:
            return f"result #{c.idx + 1} of {len(edits[c.edit_uid])}"
        return f"result #{c.idx + 1} of “{_short(c.instruction, 24)}” (earlier)"

    def walk(node: str, depth: int) -> None:
        prefix = f"{EM * (depth - 1)}└ " if depth else ""
        out.append((prefix + label(node), node))
        for _, child in children.get(node, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return out


def breadcrumbs(store: Store, candidate_id: int | None) -> str:
    """"photo → “make it grey” #3 → “flip it” #1" for the current source (each result numbered as its edit's
    gallery numbers it)."""
    if candidate_id is None:
        return "original photo"
    parts = ["photo"] + [f"“{_short(c.instruction, 24)}” #{c.idx + 1}" for c in store.lineage(candidate_id)]
    return " → ".join(parts)


def edit_label(row: dict[str, Any], ratings: bool = False) -> str:
    """One line for an edit of ``Store.recent_edits``: when, the instruction, how many results (and ratings)."""
    when = datetime.fromtimestamp(row["created_at"]).strftime("%b %d %H:%M")
    rated = f" · {_plural(row['n_ratings'], 'rating')}" if ratings else ""
    return f"{when} · “{_short(row['instruction'], 50)}” · {_plural(row['n'], 'candidate')}{rated}"


def earlier_choices(store: Store, limit: int, rater: str | None = None) -> list[tuple[str, str]]:
    """Radio choices ``(label, edit_uid)`` of the newest ``limit`` edits, newest first (``rater``'s only
    when given)."""
    return [(edit_label(r), r["edit_uid"]) for r in store.recent_edits(limit, rater=rater)]
