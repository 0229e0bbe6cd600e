"""The studio's page without a server: the history tree, the labels of earlier edits, and the rule that its
text uses characters ordinary text fonts have (no emoji)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from feedback.store import NewCandidate, Store
from studio.history import EM, breadcrumbs, earlier_choices, tree_choices

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"think": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
# Non-ASCII characters the studio may show: each has a glyph in DejaVu Sans, the text font Debian and
# Ubuntu install by default, so none falls back to an emoji font that may be missing. U+FE0F (emoji
# presentation) is invisible and falls back to the text glyph before it.
TEXT_CHARS = set("·×–—“”‘’…→←↩↪↻≈└▶▸◀◧★⚠✓⟳") | {EM, "\ufe0f"}


def _edit(store: Store, instruction: str, n: int = 4, parent: int | None = None, shade: int = 0) -> list[int]:
    src = store.load_image(store.candidate(parent).output_hash) if parent else Image.new("RGB", (16, 16), shade)
    cands = [NewCandidate(Image.new("RGB", (16, 16), (shade, i * 40, 0)), [i], [-1.0], i, i) for i in range(n)]
    return store.add_candidates(source=src, instruction=instruction, bundle_id="t@0", weights_hash="h",
                                settings=SETTINGS, candidates=cands, parent_id=parent)


def test_history_tree_is_the_path_taken(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        grey = _edit(store, "make it grey")
        flip = _edit(store, "flip it", parent=grey[1])
        pink = _edit(store, "make it pink")  # the same photo again
        other = _edit(store, "add a hat", n=2, shade=200)  # another photo
        uid = {c: store.candidate(c[0]).edit_uid for c in map(tuple, (grey, flip, pink, other))}
        rows = tree_choices(store, [uid[tuple(e)] for e in (grey, flip, pink, other)])
        # one row per edit, one per result continued from: 14 candidates make 7 rows
        assert [v for _, v in rows] == [
            f"src:{store.candidate(grey[0]).source_hash}", f"edit:{uid[tuple(grey)]}", f"cand:{grey[1]}",
            f"edit:{uid[tuple(flip)]}", f"edit:{uid[tuple(pink)]}",
            f"src:{store.candidate(other[0]).source_hash}", f"edit:{uid[tuple(other)]}",
        ]
        labels = [label for label, _ in rows]
        assert labels[0].startswith("Photo 1 (") and labels[5].startswith("Photo 2 (")
        assert labels[1] == "└ “make it grey” · 4 results"
        assert labels[2] == f"{EM}└ result #2 of 4"  # numbered as the gallery numbers it
        assert labels[3] == f"{EM * 2}└ “flip it” · 4 results"
        assert labels[4] == "└ “make it pink” · 4 results" and labels[6] == "└ “add a hat” · 2 results"

        # the current source is a node too, under its edit; a new page has no tree at all
        rows = tree_choices(store, [uid[tuple(pink)]], current=pink[3])
        assert [v for _, v in rows][1:] == [f"edit:{uid[tuple(pink)]}", f"cand:{pink[3]}"]
        assert tree_choices(store, []) == []
        # an edit whose source came from a result of another page hangs under that result, marked earlier
        rows = tree_choices(store, [uid[tuple(flip)]])
        assert rows[0] == ("result #2 of “make it grey” (earlier)", f"cand:{grey[1]}")
        assert breadcrumbs(store, flip[0]) == "photo → “make it grey” #2 → “flip it” #1"

        # earlier edits: one line each, newest first
        earlier = earlier_choices(store, 3)
        assert [v for _, v in earlier] == [uid[tuple(other)], uid[tuple(pink)], uid[tuple(flip)]]
        assert re.fullmatch(r"\w{3} \d\d \d\d:\d\d · “add a hat” · 2 candidates", earlier[0][0]), earlier[0][0]


def _studio_text() -> dict[str, set[str]]:
    return {p.name: {ch for ch in p.read_text() if ord(ch) > 127} for p in sorted((ROOT / "studio").glob("*.py"))}


def test_studio_text_has_no_emoji() -> None:
    """Buttons and messages read the same on a machine without an emoji font."""
    stray = {name: "".join(sorted(chars - TEXT_CHARS)) for name, chars in _studio_text().items()}
    assert not {k: v for k, v in stray.items() if v}, stray


@pytest.mark.skipif(shutil.which("fc-query") is None, reason="fontconfig is not installed")
def test_text_chars_are_in_dejavu_sans() -> None:
    font = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if not font.is_file():
        pytest.skip("DejaVu Sans is not installed")
    charset = subprocess.run(["fc-query", "--format=%{charset}", str(font)], capture_output=True, text=True,
                             check=True).stdout
    ranges = [tuple(int(x, 16) for x in (r.split("-") * 2)[:2]) for r in charset.split()]
    missing = [ch for ch in TEXT_CHARS - {EM, "\ufe0f"} if not any(a <= ord(ch) <= b for a, b in ranges)]
    assert not missing, missing
    # and the rule has teeth: the emoji it keeps out are not in the font
    assert not any(a <= ord("👍") <= b for a, b in ranges)


def test_a_turned_result_is_compared_with_its_source_turned_the_same_way() -> None:
    import numpy as np
    from skimage import data

    from studio.imaging import TURN_WORDS, diff_heatmap, turned_to_match

    photo = Image.fromarray(np.asarray(data.astronaut())).resize((300, 200), Image.Resampling.LANCZOS)
    for op, name in [(Image.Transpose.ROTATE_270, "rotate90_cw"), (Image.Transpose.ROTATE_90, "rotate90_ccw")]:
        turned, found = turned_to_match(photo, photo.transpose(op))
        assert found == name and name in TURN_WORDS and turned.tobytes() == photo.transpose(op).tobytes()
        assert diff_heatmap(turned, photo.transpose(op))[1] == 0.0
    # same orientation (or a square): compared as it is
    assert turned_to_match(photo, photo.convert("L")) == (photo, None)
    square = photo.resize((200, 200))
    assert turned_to_match(square, square.transpose(Image.Transpose.ROTATE_90))[1] is None


def test_a_rating_that_replaces_an_earlier_one_says_so(tmp_path: Path) -> None:
    """The store keeps one rating per rater, kind and candidates (the newest); the words saved with a click
    say when it replaced one, so totals that do not grow are no surprise."""
    from studio.ratings import save_rating

    with Store(tmp_path) as store:
        ids = _edit(store, "make it grey", n=3)
        a, b = ids[0], ids[1]

        def click(kind: str, value: object, selected: int = a, pair: list[int] | None = None, rater: str = "ann"):
            return save_rating(store, rater, kind, value, ids, selected, pair or [a, b])[1]

        assert click("thumb", "up") == "thumbs up for candidate #1"
        assert click("thumb", "down") == "thumbs down for candidate #1 (replaces your earlier thumbs up)"
        assert click("thumb", "up") == "thumbs up for candidate #1 (replaces your earlier thumbs down)"
        assert click("thumb", "up").endswith("(the same as your earlier rating: it counts once)")
        assert click("thumb", "down", rater="bob") == "thumbs down for candidate #1"  # another rater's own
        assert click("star", 4) == "★★★★ for candidate #1"  # stars and thumbs are kinds apart: both stand
        c = store.counts()
        assert (c["thumbs_up"], c["thumbs_down"], c["stars"]) == (1, 1, 1)
        # an A/B answer is the same answer whichever side each candidate was shown on
        # (the screen moves on to a fresh pair at once, so the words say which two were decided)
        assert click("pair", "A") == "A/B: A (A was #1, B was #2)"
        assert click("pair", "B", pair=[b, a]).endswith("; the same as your earlier rating: it counts once)")
        assert click("pair", "tie", pair=[b, a]) == "A/B: tie (A was #2, B was #1; replaces your earlier #1 better)"
        assert click("pair", "A", pair=[a, ids[2]]) == "A/B: A (A was #1, B was #3)"  # another pair
        assert click("best_of_n", None, selected=b) == "candidate #2 is the best of 3"
        assert click("best_of_n", None, selected=a) == "candidate #1 is the best of 3 (replaces your earlier #2 as the best)"
        c = store.counts()
        assert (c["pairs_decided"], c["pairs_undecided"], c["best_of_n"]) == (1, 1, 1)


def test_counts_add_up_and_leave_the_blind_ab_out(tmp_path: Path) -> None:
    """The summary's numbers reconcile (A/B answers = decided + ties or both bad), and a blind A/B round's
    held-out test edits are neither listed, nor counted, nor rated outside the blind A/B."""
    from studio.ratings import counts_markdown, save_rating

    with Store(tmp_path) as store:
        ids = _edit(store, "make it grey", n=4)
        for pair, v in (((0, 1), "A"), ((0, 2), "B"), ((0, 3), "tie"), ((1, 2), "both_bad"), ((1, 3), "A")):
            store.add_rating("ann", "pair", v, [ids[i] for i in pair])
        blind = [store.add_candidates(source=Image.new("RGB", (16, 16)), instruction="Cool down the colours.",
                                      bundle_id=b, weights_hash=b, settings={**SETTINGS, "ab_test": True},
                                      candidates=[NewCandidate(Image.new("RGB", (16, 16), 9), [1], [-1.0], 0)])[0]
                 for b in ("old@0", "new@1")]
        store.add_rating("judge", "pair", "A", blind)
        text = counts_markdown(store.counts())
        assert "**Collected:** 1 edit · 4 candidates · 5 A/B answers: 3 decided, 2 ties or both bad" in text, text
        assert "1 blind A/B round (" in text and "research/" not in text
        (only,) = earlier_choices(store, 10)  # the Edit tab's "Earlier edits": the user's one edit
        assert "make it grey" in only[0]
        with pytest.raises(ValueError, match="blind A/B"):
            save_rating(store, "ann", "thumb", "down", [blind[0]], blind[0], [])
        assert store.counts()["ratings"] == 6  # refused: nothing was stored


def test_another_pair_goes_through_every_pair_before_repeating_one() -> None:
    import random

    from studio.results import next_pair_state

    st = {"cand_ids": [11, 12, 13, 14], "pair": [11, 12]}
    rng = random.Random(3)
    shown = [frozenset(st["pair"])]
    for _ in range(5):
        st = next_pair_state(st, rng)
        shown.append(frozenset(st["pair"]))
    assert len(set(shown)) == 6  # all six pairs of four candidates, none twice
    # new candidates (another edit opened): the pairs shown of the old ones do not count
    st = next_pair_state(dict(st, cand_ids=[21, 22, 23], pair=[21, 22]), rng)
    assert set(st["pair"]) <= {21, 22, 23} and set(st["pair"]) != {21, 22}


def test_a_result_the_render_could_not_explain_says_so() -> None:
    from studio.results import render_note

    assert render_note({"method": "geometry+colour", "transform": {"name": "hflip"}}) == ""
    note = render_note({"method": "upsampled", "reason": "61% of the output is not explained by the source"})
    assert "the model's own picture, upscaled" in note and "61% of the output" in note
