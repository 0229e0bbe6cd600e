"""training.eval on the tiny random bundle: scores, references, reproducibility, CLI last line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from engine.image_io import fit_to_bundle
from training import eval as ev

KINDS = ("grayscale", "invert", "hflip", "add_shape")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One sample per kind of the fixed test set, missing on disk: load_samples builds it into a cache."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("eval")
    cache = tmp / "cache"
    out = ev.load_samples(tmp / "no-such-sets", "test", n_per_kind=1, corpus=None, cache=cache)
    return cache, out


@pytest.fixture(scope="module")
def samples(built):
    return [s for s in built[1] if s["kind"] in KINDS]


def test_load_samples_builds_missing_set_once(built):
    cache, out = built
    from training.data.edits import KINDS as ALL

    assert [s["kind"] for s in out] == list(ALL)  # one per kind, in the suite's order
    assert (cache / "v1" / "test" / "samples.jsonl").exists()
    again = ev.load_samples(cache, "test", corpus=None)  # now an existing set folder
    assert [s["id"] for s in again] == [s["id"] for s in out]
    assert np.array_equal(np.asarray(again[0]["target"]), np.asarray(out[0]["target"]))
    with pytest.raises(ValueError, match="split"):
        ev.load_samples(cache, "train")
    picked = ev.load_samples(cache, "test", corpus=None, kinds=["vflip", "grayscale"])
    assert [s["id"] for s in picked] == [s["id"] for s in out if s["kind"] in ("vflip", "grayscale")]
    with pytest.raises(ValueError, match="unknown edit kind"):
        ev.load_samples(cache, "test", corpus=None, kinds=["flip"])


def test_evaluate_scores_and_references(tiny_bundle, samples):
    res = ev.evaluate(tiny_bundle, samples, progress=False, keep_images=True)
    assert res.n == len(samples)
    assert set(res.kinds()) == set(KINDS)
    assert set(res.categories()) == {"global", "geometry", "object"}
    for s in res.samples:
        assert 0.0 <= s.model <= 10.0 and len(s.candidates) == 1 and not s.errors
        assert s.gt == pytest.approx(10.0, abs=0.05)  # the ground truth is the verifier's own ceiling
        assert s.floor <= 3.0  # returning the source unchanged must not pass
        assert 0.0 <= s.vq <= 10.0
        assert s.outputs is not None and s.outputs[0].size[0] > 0
    assert res.mean("gt") == pytest.approx(10.0, abs=0.05)
    # a random tiny model edits nothing right: far below the ground truth
    assert res.overall < 5.0
    assert res.ceiling == pytest.approx(np.mean([s.vq for s in res.samples]))
    line = res.summary_line()
    m = re.fullmatch(r"eval overall=([\d.]+) floor=([\d.]+) ceiling=([\d.]+) n=(\d+)", line)
    assert m and int(m.group(4)) == len(samples)
    js = res.to_json()
    assert js["n"] == len(samples) and set(js["by_kind"]) == set(KINDS)
    assert js["by_category"]["global"]["gt"] == pytest.approx(10.0, abs=0.05)
    json.dumps(js)  # serialisable (images are left out)


def test_same_seed_same_scores_and_batching_does_not_matter(tiny_bundle, samples):
    sub = samples[:3]
    a = ev.evaluate(tiny_bundle, sub, progress=False, baselines=False, batch_size=3, seed=5)
    b = ev.evaluate(tiny_bundle, sub, progress=False, baselines=False, batch_size=1, seed=5)
    c = ev.evaluate(tiny_bundle, sub, progress=False, baselines=False, batch_size=3, seed=6)
    assert [s.model for s in a.samples] == pytest.approx([s.model for s in b.samples], abs=1e-6)
    assert [s.seeds for s in a.samples] == [s.seeds for s in b.samples]
    assert [s.seeds for s in a.samples] != [s.seeds for s in c.samples]
    assert np.isnan(a.floor)  # baselines off


def test_think_mode_candidates_and_bad_input(tiny_bundle, samples):
    sub = samples[:1]
    res = ev.evaluate(tiny_bundle, sub, think=True, candidates=2, progress=False, max_new_tokens=160)
    s = res.samples[0]
    assert len(s.candidates) == 2 and s.seeds[1] == s.seeds[0] + 1
    assert len(s.reasoning) == 2
    assert s.model == pytest.approx(np.mean([c["overall"] for c in s.candidates]))
    assert all(-10.0 <= c["closeness"] <= 10.0 and -10.0 <= c["layout"] <= 10.0 for c in s.candidates)
    assert set(res.closeness_by_kind()) == set(res.closeness_by_kind("layout")) == set(res.kinds())
    with pytest.raises(ValueError, match="lacks"):
        ev.evaluate(tiny_bundle, [{"id": "x", "kind": "k"}], progress=False)
    with pytest.raises(ValueError, match="temperature"):
        ev.evaluate(tiny_bundle, sub, temperature=-1, progress=False)


def test_cli_last_line_json_and_sheet(tiny_bundle, built, tmp_path, capsys):
    cache, _ = built
    sets = cache  # the set built by load_samples above, read as an existing set folder
    out, sheet = tmp_path / "r.json", tmp_path / "sheet.png"
    rc = ev.main(["--bundle", str(tiny_bundle.path), "--sets", str(sets), "--n-per-kind", "1", "--threads", "1",
                  "--greedy", "--out", str(out), "--sheet", str(sheet)])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"eval overall=([\d.]+) floor=([\d.]+) ceiling=([\d.]+) n=(\d+)", lines[-1])
    assert m, lines[-1]
    n = int(m.group(4))
    assert n == len(built[1])
    js = json.loads(out.read_text())
    assert js["n"] == n and len(js["samples"]) == n and js["settings"]["temperature"] == 0.0
    assert abs(js["overall"]["model"] - float(m.group(1))) < 1e-3
    assert any(line.startswith("overall") for line in lines)
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.width > 300 and im.height > 100


def test_references_only_with_a_bare_tokenizer(tiny_bundle, built, capsys):
    """--vq: floor and ceilings from an image tokenizer alone (before an editing model exists)."""
    cache, _ = built
    rc = ev.main(["--vq", str(tiny_bundle.path / "vq"), "--image-area", "4096", "--sets", str(cache),
                  "--n-per-kind", "1", "--threads", "1"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"eval overall=nan floor=([\d.]+) ceiling=([\d.]+) n=(\d+)", last)
    assert m, last
    res = ev.evaluate(tiny_bundle, built[1][:2], generate=False, progress=False)
    assert np.isnan(res.overall) and res.samples[0].candidates == []
    assert res.mean("gt") == pytest.approx(10.0, abs=0.05)


def test_training_mode_is_restored(tiny_bundle, samples):
    lm = tiny_bundle.lm
    lm.train()
    try:
        res = ev.evaluate(tiny_bundle, samples[:1], progress=False, baselines=False, temperature=0)
        assert lm.training  # evaluate switched to eval mode only while it ran
        assert res.settings["temperature"] == 0 and not res.samples[0].errors
    finally:
        lm.eval()


def test_compare_table_deltas_and_mismatch():
    before = {"n": 2, "overall": {"model": 2.0}, "by_kind": {"hflip": {"model": 1.0}, "grayscale": {"model": 3.0}},
              "by_category": {"geometry": {"model": 1.0}, "global": {"model": 3.0}}}
    after = {"n": 2, "overall": {"model": 3.5}, "by_kind": {"hflip": {"model": 1.5}, "grayscale": {"model": 5.5}},
             "by_category": {"geometry": {"model": 1.5}, "global": {"model": 5.5}}}
    table = ev.compare_table(before, after)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:] if not line.startswith("-")}
    assert rows["grayscale"] == ["3.00", "5.50", "+2.50"]
    assert rows["hflip"] == ["1.00", "1.50", "+0.50"]
    assert rows["overall"] == ["2.00", "3.50", "+1.50"]
    with pytest.raises(ValueError, match="different samples"):
        ev.compare_table(before, {**after, "n": 3})


def test_guidance_uses_each_samples_own_source(tiny_bundle, samples):
    from engine.layout import build_prompt, parse_generation
    from engine.sampler import make_guidance, sample_all

    sub = samples[:3]
    kw = dict(progress=False, baselines=False, keep_images=True, seed=2, temperature=1.0)
    batched = ev.evaluate(tiny_bundle, sub, batch_size=3, cfg_text=3.0, **kw)
    alone = ev.evaluate(tiny_bundle, sub, batch_size=1, cfg_text=3.0, **kw)
    plain = ev.evaluate(tiny_bundle, sub, batch_size=3, **kw)
    assert batched.settings["cfg_text"] == 3.0 and plain.settings["cfg_text"] == 1.0
    def diff(a, b) -> int:  # the tokenizer decodes a batch with float noise of one grey level
        return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())

    for s, t in zip(batched.samples, alone.samples, strict=True):
        assert diff(s.outputs[0], t.outputs[0]) <= 1
    assert any(diff(s.outputs[0], p.outputs[0]) > 8 for s, p in zip(batched.samples, plain.samples, strict=True))
    # the last sample, edited through the engine's own guidance branches for one source
    s = sub[-1]
    grid = np.asarray(tiny_bundle.vq.encode([fit_to_bundle(tiny_bundle, s["source"])])[0], dtype=np.int64)
    tok = tiny_bundle.tokenizer
    g = sample_all(tiny_bundle, [build_prompt(tok, grid, s["instruction"], False)], *grid.shape,
                   [ev.sample_seed(2, s["id"])], temperature=1.0, top_k=ev.EARL_TOP_K,
                   guidance=make_guidance(tok, grid, 1, False, 3.0))[0]
    _, out = parse_generation(tok, g.tokens, expect_hw=grid.shape)
    assert diff(tiny_bundle.vq.decode([out])[0], batched.samples[-1].outputs[0]) <= 1
    with pytest.raises(ValueError, match="guidance"):
        ev.evaluate(tiny_bundle, sub, cfg_text=0.0, progress=False)


def test_heldout_phrasings_and_a_reader(tiny_bundle, built, tmp_path, capsys):
    from training import heldout_phrasings

    cache, samples = built
    sub = [s for s in samples if s["kind"] in ("sepia", "rotate90", "remove", "compose")]
    res = ev.evaluate(tiny_bundle, sub, progress=False, baselines=False, phrasings="heldout", temperature=0.0)
    texts = [s.instruction for s in res.samples]
    assert texts == [heldout_phrasings.instruction(s) for s in sub]
    assert not set(texts) & {s["instruction"] for s in sub} and res.settings["phrasings"] == "heldout"
    with pytest.raises(ValueError, match="phrasings"):
        ev.evaluate(tiny_bundle, sub, progress=False, phrasings="slang")
    # the CLI: same last line; with a reader the model gets its canonical words, the typed text is kept
    from training.understanding import build

    folder = build(tmp_path / "u", per_kind=20, seed=0)
    out = tmp_path / "r.json"
    rc = ev.main(["--bundle", str(tiny_bundle.path), "--sets", str(cache), "--n-per-kind", "1", "--threads", "1",
                  "--kinds", "sepia,rotate90", "--phrasings", "heldout", "--understand", str(folder), "--greedy",
                  "--out", str(out)])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"eval overall=[\d.]+ floor=[\d.]+ ceiling=[\d.]+ n=2", last), last
    js = json.loads(out.read_text())
    assert js["settings"]["understanding"] == str(folder)
    for s in js["samples"]:
        assert s["instruction"] == heldout_phrasings.instruction(next(x for x in samples if x["id"] == s["id"]))
        assert s["understood"] is None or s["understood"] != s["instruction"]
