"""End-to-end through gradio_client against the studio as ``launch.py --tiny-demo`` builds it (served in
this process): upload, streamed edit with N=2 (intermediate previews observed), ratings, and the ratings in
the store with their tokens."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.sampler import fp16_available
from feedback.store import Store
from tests.studio_server import make_photo, studio_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

MODEL = "mem:tiny-demo"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from engine.tiny import make_tiny_random_bundle

    root = tmp_path_factory.mktemp("studio-e2e")
    data = root / "data"
    # A "fine-tuned" bundle in <data>/bundles/ must show up in the model picker and be usable.
    make_tiny_random_bundle(data / "bundles" / "tiny-ft", seed=1, name="tiny-ft")
    # A slower bundle (32x32 grid, 4 layers) for the cancel test: an edit on it must outlast the cancel
    # request's round trip on a fast idle machine too, not only on a loaded one.
    make_tiny_random_bundle(data / "bundles" / "tiny-slow", seed=2, name="tiny-slow", image_area=256 * 256,
                            hidden=128, layers=4)
    # A bundle that may turn a photo on its side (the random model picks either header).
    from engine.bundle import save_bundle

    turn = make_tiny_random_bundle(seed=1, name="tiny-turn")
    turn.config.transpose = True
    save_bundle(turn, data / "bundles" / "tiny-turn")
    with studio_app(data) as url:
        yield url, data, root


def _edit_args(photo: Path | None, instruction: str, n: int = 2, seed: int = 123, think: bool = False,
               model: str = MODEL) -> list:
    # photo, instruction, N, think, temperature, top_k, top_p, seed, randomize, model, rater
    return [handle_file(str(photo)) if photo else None, instruction, n, think, 1.0, 2048, 1.0, seed, False, model,
            "e2e-rater"]


def _status(output: tuple) -> str:
    return output[0] if isinstance(output[0], str) else ""


# /edit's API outputs (buttons and gr.State are not part of the API): status, reasoning, seed,
# history, gallery, slider, heatmap, info, download, pair_a, pair_b, msg.
GALLERY = 4


def _gallery(output: tuple) -> list[dict]:
    g = output[GALLERY]
    if isinstance(g, dict):  # a gr.update(...) carrying a value
        return list(g.get("value") or [])
    return list(g or [])


def test_streamed_edit_then_ratings_land_in_store(server) -> None:
    url, data, root = server
    photo = make_photo(root / "photo.png")
    client = Client(url, verbose=False, download_files=str(root / "downloads"))

    job = client.submit(*_edit_args(photo, "make it black and white", n=2, seed=123), api_name="/edit")
    seen: list[tuple] = []
    while not job.done():
        time.sleep(0.05)
    seen = job.outputs()
    assert job.status().success, job.exception()
    final = seen[-1]
    assert "Done" in _status(final), _status(final)
    assert "first preview" in _status(final) and "total" in _status(final)
    # Streaming: at least one update before the end showed progress with candidate images in the gallery.
    streamed = [o for o in seen[:-1] if "Generating" in _status(o) and _gallery(o)]
    assert streamed, f"no intermediate preview among {[_status(o) for o in seen]}"
    partial = [o for o in streamed if "row" in (_gallery(o)[0].get("caption") or "")]
    assert partial, "no preview of a partly generated candidate was streamed"
    assert len(_gallery(partial[0])) == 2
    assert Path(_gallery(partial[0])[0]["image"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [g["caption"] for g in _gallery(final)] == ["#1 · seed 123", "#2 · seed 124"]
    assert Path(_gallery(final)[0]["image"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # lossless, not WebP
    assert Path(final[8]["value"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the download button's file

    # Ratings through the same session (gr.State keeps the shown candidates per session).
    msg = client.predict("e2e-rater", api_name="/thumb_up")[0]
    assert "Saved" in msg, msg
    # an API client selects a candidate by its number, as a click on it in the gallery does
    client.predict(2, api_name="/select_candidate")
    assert "Saved" in client.predict("e2e-rater", api_name="/star_4")[0]
    with pytest.raises(Exception, match="candidates #1 to #2"):
        client.predict(3, api_name="/select_candidate")
    assert "Saved" in client.predict("e2e-rater", api_name="/pair_b")[0]
    assert "Saved" in client.predict("e2e-rater", api_name="/best_of_n")[0]

    with Store(data) as store:
        cands = store.candidates()
        assert [c.seed for c in cands] == [123, 124]
        assert all(c.instruction == "make it black and white" and c.bundle_id == "tiny-demo@0" for c in cands)
        thumbs = store.thumbs()
        assert len(thumbs) == 1 and thumbs[0].up and thumbs[0].rater == "e2e-rater"
        c = thumbs[0].candidate
        assert c.idx == 0 and c.tokens and len(c.tokens) == len(c.logprobs)
        # the recorded token grid matches the output image (8 px per token in the tiny bundle)
        assert c.grid_h * 8 == store.load_image(c.output_hash).size[1]
        assert c.logprob_sum == pytest.approx(sum(c.logprobs))
        assert [(s.stars, s.candidate.idx) for s in store.stars()] == [(4, 1)]  # the selected #2
        pair = store.ratings("pair")[0]
        assert sorted(pair.candidate_ids) == sorted(x.id for x in cands) and pair.shown_order == pair.candidate_ids
        prefs = store.preference_pairs()
        assert {p.kind for p in prefs} == {"pair", "best_of_n"}
        assert all(p.chosen.tokens and p.rejected.tokens for p in prefs)
        assert store.integrity_check() == "ok"
        # the studio decodes with half-precision weights on a CPU by default, and records it
        assert all(c.settings["fp16"] is fp16_available() for c in cands)

    # The export names the commands that open it, and both do.
    import datasets

    msg = client.predict(api_name="/export_dataset")
    assert "load_from_disk" in msg and "load_dataset" in msg, msg
    folder = msg.split("`")[1]
    assert datasets.load_from_disk(folder)["ratings"].num_rows == 4
    ratings = datasets.load_dataset(folder, "ratings", split="train", cache_dir=str(root / "hf"))
    assert sorted(ratings["kind"]) == ["best_of_n", "pair", "star", "thumb"]


def test_reasoning_streams_and_cancel_stops_the_edit(server) -> None:
    url, data, root = server
    # status and reasoning text only: the streamed previews are not downloaded
    client = Client(url, verbose=False, download_files=False)
    photo = make_photo(root / "photo5.png", size=(64, 64))
    first = client.predict(*_edit_args(photo, "make it warmer", n=2, seed=12), api_name="/edit")
    assert len(_gallery(first)) == 2
    # 8 candidates of a 32x32 grid (~1,000 image tokens each, after the reasoning) on the slow bundle run
    # long enough to see reasoning text arrive and to cancel the edit before it finishes.
    slow = f"path:{(data / 'bundles' / 'tiny-slow').resolve()}"
    job = client.submit(*_edit_args(photo, "make it sepia", n=8, seed=13, think=True, model=slow), api_name="/edit")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outs = job.outputs()
        if any("Generating" in _status(o) and isinstance(o[1], str) and o[1].strip() for o in outs):
            break
        time.sleep(0.05)
    streamed_text = [o[1] for o in job.outputs() if isinstance(o[1], str) and o[1].strip()]
    assert streamed_text and streamed_text[0].startswith("[1]"), "no reasoning text was streamed"
    assert "Cancelling" in client.predict(api_name="/cancel")
    while not job.done():
        time.sleep(0.05)
    final = job.outputs()[-1]
    assert "Cancelled" in _status(final), _status(final)
    with Store(data) as store:
        assert not [c for c in store.candidates() if c.instruction == "make it sepia"]
    # the earlier edit's results left the screen when this one started, and are not rated by a stray click
    assert _gallery(final) == [] and final[5] is None
    assert "Nothing to rate" in client.predict("x", api_name="/thumb_up")[0]


def test_bad_input_gets_a_clear_message(server, caplog, capfd) -> None:
    url, data, root = server
    caplog.set_level("WARNING", logger="studio.uploads")
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    photo = make_photo(root / "photo2.png")
    out = client.predict(*_edit_args(photo, "   "), api_name="/edit")
    assert "Type an instruction" in _status(out)
    out = client.predict(*_edit_args(None, "make it grey"), api_name="/edit")
    assert "Upload a photo" in _status(out)
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(AppError, match="could not be read as an image"):
        client.predict(*_edit_args(broken, "make it grey"), api_name="/edit")
    truncated = root / "truncated.png"
    truncated.write_bytes(photo.read_bytes()[:200])
    try:
        out = client.predict(*_edit_args(truncated, "make it grey"), api_name="/edit")
        assert "⚠️" in _status(out) and ("truncated" in _status(out) or "corrupt" in _status(out)), _status(out)
    except AppError as e:  # rejected already while reading the upload: also a clear message
        assert "could not be read as an image" in str(e)
    # Nothing to rate or continue from yet in this fresh session: a message, not an exception.
    assert "Nothing to rate" in client.predict("x", api_name="/thumb_up")[0]
    assert "Run an edit first" in client.predict(api_name="/continue_from")[2]
    # The server logs each refused upload in one line, and prints no traceback for them.
    logged = [r.getMessage() for r in caplog.records if r.name == "studio.uploads"]
    assert len(logged) == 2 and all(m.startswith("upload rejected: ") and "\n" not in m for m in logged)
    assert "Traceback" not in capfd.readouterr().err


def test_continue_editing_builds_a_history_tree(server) -> None:
    url, data, root = server
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    photo = make_photo(root / "photo3.png", size=(64, 64))
    client.predict(*_edit_args(photo, "make it warmer", n=1, seed=7), api_name="/edit")
    cont = client.predict(api_name="/continue_from")  # photo, crumbs, status, history, panel…
    assert "Source is now result" in cont[2]
    # The photo box now holds the chosen result; editing it again links the new result to its parent.
    out = client.predict(*_edit_args(Path(cont[0]), "flip it", n=1, seed=8), api_name="/edit")
    assert "Done" in _status(out)
    with Store(data) as store:
        first = [c for c in store.candidates() if c.instruction == "make it warmer" and c.seed == 7][0]
        second = [c for c in store.candidates() if c.instruction == "flip it" and c.seed == 8][0]
        assert second.parent_id == first.id and second.source_hash == first.output_hash
        assert [c.id for c in store.lineage(second.id)] == [first.id, second.id]
    # Going back to the first result through the history tree makes it the source again.
    back = client.predict(f"cand:{first.id}", api_name="/history_go")  # photo, crumbs, status, panel…
    assert f"result #{first.idx + 1} of “make it warmer”" in back[2] and "make it warmer" in back[1]
    assert Image.open(back[0]).tobytes() == Image.open(cont[0]).tobytes()
    # A new page opens an earlier edit from its folded list: it joins the page's tree, with its source.
    fresh = Client(url, verbose=False, download_files=str(root / "downloads"))
    assert second.edit_uid in str(fresh.predict(api_name="/earlier_edits"))
    opened = fresh.predict(second.edit_uid, api_name="/open_earlier")  # photo, crumbs, status, panel…, history
    assert "flip it" in opened[2] and opened[-1]["value"] == f"edit:{second.edit_uid}"
    # the tree: the earlier result it was made from, then the edit
    assert [v for _, v in opened[-1]["choices"]] == [f"cand:{first.id}", f"edit:{second.edit_uid}"]
    assert Image.open(opened[0]).tobytes() == Image.open(cont[0]).tobytes()  # it was made from the first result


def test_model_picker_finds_fine_tuned_bundles(server) -> None:
    url, data, root = server
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    key = f"path:{(data / 'bundles' / 'tiny-ft').resolve()}"
    api = client.view_api(print_info=False, return_format="dict")
    model_param = [p for p in api["named_endpoints"]["/edit"]["parameters"] if p["parameter_name"] == "model_key"][0]
    assert key in str(model_param["type"]), model_param  # offered as a dropdown choice
    args = _edit_args(make_photo(root / "photo4.png", size=(64, 64)), "make it pink", n=1, seed=3)
    args[9] = key
    assert "Done" in _status(client.predict(*args, api_name="/edit"))
    with Store(data) as store:
        c = [c for c in store.candidates() if c.instruction == "make it pink"][0]
        assert c.bundle_id == "tiny-ft@0" and len(c.weights_hash) == 64


def test_only_images_and_exports_are_served(server) -> None:
    import urllib.error
    import urllib.request

    url, data, root = server
    for path in ["/etc/passwd", str(data / "feedback.sqlite3"), str(Path(__file__))]:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert e.value.code in (403, 404), path


def test_auth_names_the_rater_and_upload_limit(tmp_path: Path, capfd) -> None:
    data = tmp_path / "data"
    with studio_app(data, "--auth", "alice:s3cret", "--max-upload-mb", "0.05") as url:
        # the studio says where it runs and how to share it; Gradio's hint for programmers is not shown
        printed = capfd.readouterr().out
        assert f"running on {url}" in printed and "--share" in printed and "share=True" not in printed, printed
        with pytest.raises(Exception):  # noqa: B017 - wrong password: the client cannot even connect
            Client(url, verbose=False, auth=("alice", "wrong"))
        client = Client(url, verbose=False, auth=("alice", "s3cret"), download_files=str(tmp_path / "dl"))
        out = client.predict(*_edit_args(make_photo(tmp_path / "p.png", (64, 64)), "make it grey", n=2), api_name="/edit")
        assert "Done" in _status(out)
        # The typed rater name is ignored when auth is on: ratings belong to the signed-in user.
        assert "by <b>alice</b>" in client.predict("mallory", api_name="/thumb_down")[0]
        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(big)
        assert big.stat().st_size > 0.05 * 1024 * 1024
        with pytest.raises(Exception, match="(?i)too large|exceeds|size"):
            client.predict(*_edit_args(big, "make it grey"), api_name="/edit")
    with Store(data) as store:
        (thumb,) = store.thumbs()
        assert thumb.rater == "alice" and not thumb.up


def test_cancel_keeps_the_store_clean(tmp_path: Path, tiny_bundle) -> None:
    """The runner with the real engine: cancelling after the first preview stops generation; no
    unfinished candidate is recorded."""
    import threading

    from engine.api import edit
    from studio.runner import EditRequest, stream_edit

    with Store(tmp_path) as store:
        cancel = threading.Event()
        src = Image.open(make_photo(tmp_path / "p.png", (64, 64))).convert("RGB")
        req = EditRequest(source=src, instruction="make it grey", n=2, seed=5, preview_every=1)
        snaps = []
        for snap in stream_edit(tiny_bundle, store, req, edit_fn=edit, cancel=cancel, min_interval_s=0.0):
            snaps.append((snap.finished, sum(snap.rows_done), snap.cancelled))
            if snap.first_preview_s is not None:
                cancel.set()
        assert snaps[-1][0] and snaps[-1][2], snaps  # finished, cancelled
        assert snaps[-1][1] < 2 * (src.size[1] // 8), "generation went on after cancel"
        assert store.candidates() == []

        # Uncancelled, the same request records both candidates with their seeds and settings.
        final = list(stream_edit(tiny_bundle, store, req, edit_fn=edit))[-1]
        assert not final.cancelled and all(final.candidate_ids)
        cands = store.candidates(final.candidate_ids)
        assert [c.seed for c in cands] == [5, 6] and cands[0].settings["preview_every"] == 1
        assert cands[0].timings["studio_total"] >= cands[0].timings["studio_first_preview"] > 0


def _size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_a_large_photo_comes_back_at_its_size(server) -> None:
    """A photo larger than the model's picture and than the screen: the download is the edit at the photo's
    own size, the page's images are screen-sized previews, the model's own output is one click away, and
    continuing edits the full-size result."""
    from studio.imaging import SCREEN_SIDE

    url, data, root = server
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    big = (2000, 1200)
    photo = make_photo(root / "big.png", size=big)
    out = client.predict(*_edit_args(photo, "make it warmer", n=2, seed=21), api_name="/edit")
    assert "Done" in _status(out), _status(out)
    download = out[8]["value"]
    assert _size(download) == big
    assert "2000×1200" in out[8]["label"]
    # the page: gallery, slider and heatmap are previews at most SCREEN_SIDE wide, of the same shape
    shown = [g["image"] for g in _gallery(out)] + [p for p in out[5]] + [out[6]]
    for p in shown:
        w, h = _size(p)
        assert max(w, h) == SCREEN_SIDE and abs(w / h - big[0] / big[1]) < 0.01, (p, (w, h))
    view = out[-1]
    labels = [label for label, _ in view["choices"]]
    assert labels[0] == "full resolution 2000×1200" and labels[1].startswith("model output ")
    with Store(data) as store:
        first = [c for c in store.candidates() if c.instruction == "make it warmer" and c.seed == 21][0]
        model_size = store.load_image(first.output_hash).size
        assert max(model_size) < SCREEN_SIDE and first.grid_w * 8 == model_size[0]
        assert store.load_image(first.full_hash).size == big and store.load_image(first.original_hash).size == big
        assert store.load_image(first.source_hash).size == model_size  # what the model saw, as training reads it
        assert first.render.get("method")
        # the download is the stored full-resolution result, pixel for pixel
        assert Image.open(download).tobytes() == store.load_image(first.full_hash).tobytes()
    assert labels[1] == f"model output {model_size[0]}×{model_size[1]}"

    # One click: the model's own output in the compare widgets and the download.
    raw = client.predict(1, api_name="/view")  # slider, heatmap, info, download, view
    assert _size(raw[3]["value"]) == model_size and _size(raw[0][1]) == model_size
    back = client.predict(0, api_name="/view")
    assert _size(back[3]["value"]) == big

    # Continue editing: the photo box shows a preview; the next edit starts from the full-size result.
    cont = client.predict(api_name="/continue_from")
    assert "Source is now result" in cont[2] and max(_size(cont[0])) == SCREEN_SIDE
    out2 = client.predict(*_edit_args(Path(cont[0]), "flip it", n=1, seed=22), api_name="/edit")
    assert "Done" in _status(out2) and _size(out2[8]["value"]) == big
    with Store(data) as store:
        second = [c for c in store.candidates() if c.instruction == "flip it" and c.seed == 22][0]
        assert second.parent_id == first.id and second.original_hash == first.full_hash

    # A new page reopens the first edit and goes back to its photo in the tree: the photo node is the
    # upload at its own size, so the next edit from it comes back at that size too.
    fresh = Client(url, verbose=False, download_files=str(root / "downloads"))
    fresh.predict(api_name="/earlier_edits")  # what a new page lists
    opened = fresh.predict(first.edit_uid, api_name="/open_earlier")
    photo_node = opened[-1]["choices"][0][1]
    assert photo_node == f"src:{first.original_hash}"
    back = fresh.predict(photo_node, api_name="/history_go")
    out3 = fresh.predict(*_edit_args(Path(back[0]), "make it cooler", n=1, seed=23), api_name="/edit")
    assert "Done" in _status(out3) and _size(out3[8]["value"]) == big


def test_a_portrait_result_of_a_landscape_photo(server) -> None:
    """A bundle that may turn a photo on its side: a landscape upload's candidate can come out portrait. It is
    shown, compared (with the source turned the same way, in the slider and the heatmap) and downloaded
    portrait, for the full-resolution result and the model's own output alike."""
    url, data, root = server
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    photo = make_photo(root / "wide.png", size=(180, 120))
    args = _edit_args(photo, "rotate it 90 degrees", n=2, seed=4)
    args[9] = f"path:{(data / 'bundles' / 'tiny-turn').resolve()}"
    out = client.predict(*args, api_name="/edit")
    assert "Done" in _status(out), _status(out)
    with Store(data) as store:
        cands = sorted([c for c in store.candidates() if c.instruction == "rotate it 90 degrees"], key=lambda c: c.idx)
        assert cands[0].grid_h > cands[0].grid_w  # this seed's first candidate turned
        assert cands[0].settings["transpose"] is True
        assert store.load_image(cands[0].output_hash).height > store.load_image(cands[0].output_hash).width
        full = store.load_image(cands[0].full_hash)
        assert full.height > full.width
    w, h = _size(out[8]["value"])  # the download: the result at the photo's size, portrait
    assert h > w and (w, h) == full.size
    before, after = out[5]
    assert _size(before)[1] > _size(before)[0] and _size(after)[1] > _size(after)[0]  # the source turned to match
    assert _size(out[6])[1] > _size(out[6])[0]  # the heatmap, portrait
    assert "compared with the source" in out[7]
    raw = client.predict(1, api_name="/view")  # the model's own output
    assert _size(raw[0][0]) == _size(raw[0][1]) and _size(raw[3]["value"])[1] > _size(raw[3]["value"])[0]
    assert "compared with the source" in raw[2]


def test_blind_ab_through_the_api(server) -> None:
    """The Fine-tune tab's blind A/B by its API names, as benchmarks.feedback_loop drives it: a held-out
    edit of the chosen category, both bundles' images, and the table with the interval and the verdict."""
    from training.eval import load_samples

    url, data, root = server
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    new = f"path:{(data / 'bundles' / 'tiny-ft').resolve()}"
    geometry = {s["instruction"] for s in load_samples(split="test") if s["category"] == "geometry"}
    out = client.predict(MODEL, new, "Geometry (flips, turns, zoom)", api_name="/ab_next")
    assert out[0].removeprefix("**Instruction:** ") in geometry, out[0]
    left, right = Image.open(out[2]), Image.open(out[3])
    assert left.size == right.size and left.size[0] > 0
    table = client.predict("e2e-judge", api_name="/ab_left")
    table = table[0] if isinstance(table, (list, tuple)) else table
    assert "| 1 |" in table and "95 % interval" in table, table
    assert "of 1 comparison " in table and "no measurable difference yet" in table, table
    with Store(data) as store:
        (r,) = [r for r in store.ratings("pair") if r.rater == "e2e-judge"]
        assert r.value == "A" and all(c.settings["ab_test"] for c in store.candidates(r.candidate_ids))
        blind = {c.edit_uid for c in store.candidates(r.candidate_ids)}
        counts = store.counts()
    # its two held-out test edits are not the user's: not among the earlier edits (Edit tab, Review tab), nor
    # in the totals the Review tab shows
    earlier = client.predict(api_name="/earlier_edits")["choices"]
    listed, summary = client.predict(api_name="/list_edits")
    assert earlier and not blind & {uid for _, uid in earlier}
    assert listed["choices"] and not blind & {uid for _, uid in listed["choices"]}
    mine = counts["edits"] - counts["ab_edits"]
    assert len(blind) == 2 and counts["ab_edits"] >= 2 and f"**Collected:** {mine} edit" in summary, summary


@pytest.mark.slow
def test_a_fine_tuned_model_is_used_once_registered(server) -> None:
    """The Fine-tune tab's one-click DPO on a handful of ratings: its status keeps the low-data warning while
    it runs; "Use the new model" switches the Edit tab's picker to the new bundle, and a page loaded later
    lists it."""
    url, data, root = server
    client = Client(url, verbose=False, download_files=str(root / "dl-ft"))
    photo = make_photo(root / "photo-ft.png", size=(64, 64))
    assert "Done" in _status(client.predict(*_edit_args(photo, "make it grey", n=2, seed=31), api_name="/edit"))
    assert "Saved" in client.predict("ft-rater", api_name="/pair_a")[0]
    base = f"path:{(data / 'bundles' / 'tiny-ft').resolve()}"
    dpo = "DPO — from A/B pairs, best-of-N, stars and thumbs"
    msg = client.predict(dpo, base, "tiny-ft-dpo", 1, 1, "Programmatic verifier (suite photos)", "", False,
                         api_name="/finetune_start")[0]
    assert "Started **DPO**" in msg and "⚠️ Only" in msg, msg
    deadline = time.monotonic() + 240
    while True:
        status = client.predict(api_name="/finetune_poll")[0]
        assert "⚠️ Only" in status and "of the 100 ratings" in status, status  # still there, not for 2 s only
        if "**done**" in status or "**failed**" in status or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "**done**" in status, status
    out = client.predict(api_name="/finetune_register")  # status, start from, bundle 1, bundle 2, Edit tab's model
    key = f"path:{(data / 'bundles' / 'tiny-ft-dpo').resolve()}"
    assert f"Registered: `{key[5:]}`" in out[0] and "Edit tab's model" in out[0], out[0]
    assert out[-1]["value"] == key and key in [k for _, k in out[-1]["choices"]], out[-1]
    assert out[3]["value"] == key and out[2]["value"] == base  # the blind A/B: new against the one it came from
    # a page loaded later (a reload, another browser) lists it without a rescan
    fresh = Client(url, verbose=False, download_files=False)
    assert key in [k for _, k in fresh.predict(api_name="/model_choices")["choices"]]


def test_the_loop_benchmarks_person_rates_through_the_public_api(server) -> None:
    """``benchmarks.feedback_loop``'s simulated person edits and rates as a browser would: /edit, then
    /select_candidate and a rating form for every candidate; the ratings land on the candidates it picked."""
    from benchmarks.feedback_loop import Person, rate_edits

    url, data, root = server
    client = Client(url, verbose=False, download_files=str(root / "dl-loop"))
    log = (root / "loop.log").open("w")
    info = rate_edits(client, MODEL, Person("loop-person", seed=3), ["grayscale"], n_ratings=4, candidates=2, seed=0,
                      mix={"thumb": 0.5, "star": 0.5}, work=root, temperature=1.0, log=log)
    log.close()
    assert info["ratings"] == 4 and info["edits"] == 2, info
    with Store(data) as store:
        mine = [(t.candidate.idx, "thumb") for t in store.thumbs() if t.rater == "loop-person"]
        mine += [(s.candidate.idx, "star") for s in store.stars() if s.rater == "loop-person"]
    # per edit one form, given to each of its two candidates: #1 and #2 each rated twice in all
    assert sorted(i for i, _ in mine) == [0, 0, 1, 1], mine
