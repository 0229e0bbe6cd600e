"""The SFT loop: trains, checkpoints, resumes from the checkpoint, and exports a bundle the engine runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import edit_blocking
from engine.bundle import load_bundle
from engine.constraint import constraint_for
from engine.vq import NanoVQ
from training.data.pretokenize import load_cache
from training.train_sft import (
    Batcher,
    SFTConfig,
    digit_sum_init,
    sft_batch,
    teacher_targets,
    train,
)


def _tiny_setup(tmp_path):
    vq = NanoVQ(block_out_channels=(16, 32, 32), fsq_levels=(4, 4, 4), norm_num_groups=8)
    vq.save_pretrained(str(tmp_path / "vq"))
    rng = np.random.default_rng(0)
    recs = []
    for i in range(12):
        src = rng.integers(0, vq.codebook_size, (4, 4)).astype(np.uint16)
        recs.append({
            "src": src, "tgt": src[:, ::-1].copy(), "kind": "hflip",
            "instructions": ["Flip the photo horizontally.", "Mirror it."],
            "reasoning": f"Change: mirror left to right. Where: box [0,0,3,3] of the 4x4 grid. Keep: content {i}.",
            "keep_reasoning": "Nothing to change.",
        })
    (tmp_path / "cache").mkdir()
    torch.save(recs, tmp_path / "cache" / "shard_00000.pt")
    return SFTConfig(
        cache=str(tmp_path / "cache"), vq=str(tmp_path / "vq"), out=str(tmp_path / "run"), hidden=64, layers=1,
        heads=2, kv_heads=2, intermediate=128, text_vocab_size=300, batch_size=2, warmup=1, steps=3,
        ckpt_every=2, threads=1, image_area=32 * 32,
    )


def test_trains_resumes_and_exports(tmp_path, capsys):
    cfg = _tiny_setup(tmp_path)
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 3
    first = load_bundle(tmp_path / "run" / "checkpoint" / "bundle")

    cfg.steps = 5  # a longer schedule continues from step 3 rather than starting over
    train(cfg)
    assert "resumed from step 3" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 5
    second = load_bundle(tmp_path / "run" / "checkpoint" / "bundle")
    w1, w2 = first.lm.lm_head.weight, second.lm.lm_head.weight
    assert not torch.equal(w1, w2)  # it kept training

    train(cfg, export=str(tmp_path / "shipped"))
    shipped = load_bundle(tmp_path / "shipped")
    photo = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    from PIL import Image

    done = edit_blocking(shipped, Image.fromarray(photo), "Mirror it.", n=1, seed=0)[0]
    assert done.grid.shape == (4, 4)


def test_digit_sum_init_relates_neighbouring_codes():
    torch.manual_seed(0)
    levels = [7, 5, 5]
    weight = torch.zeros(200, 32)
    ids = torch.arange(175) + 20
    digit_sum_init(weight, ids, levels)
    e = weight[ids]
    near = torch.nn.functional.cosine_similarity(e[:-1:7], e[1::7]).mean()  # codes differing in digit 0 only
    far = torch.nn.functional.cosine_similarity(e[:80], e[80:160]).mean()
    assert near > 0.4 and near > far + 0.3
    assert torch.equal(weight[:20], torch.zeros(20, 32))  # text rows untouched


def _records(kinds: dict[str, int]) -> list[dict]:
    src = np.zeros((4, 4), np.uint16)
    return [{"src": src, "tgt": src, "kind": k, "instructions": [k], "reasoning": "", "keep_reasoning": ""}
            for k, n in kinds.items() for _ in range(n)]


def test_focus_kinds_oversample_a_category():
    recs = _records({"hflip": 50, "vflip": 50, "grayscale": 100, "sepia": 100})
    cfg = SFTConfig(batch_size=8, keep_prob=0.0, focus_kinds="geometry", focus_weight=4.0)
    b = Batcher(recs, cfg, seed=0)
    drawn = [it[2] for _ in range(300) for it in b.next()[2]]
    share = sum(k in ("hflip", "vflip") for k in drawn) / len(drawn)
    # 100 geometry samples at weight 4 against 200 others at weight 1: 400 / 600 of the draws
    assert abs(share - 2 / 3) < 0.05
    plain = Batcher(recs, SFTConfig(batch_size=8, keep_prob=0.0), seed=0)
    drawn = [it[2] for _ in range(300) for it in plain.next()[2]]
    assert abs(sum(k in ("hflip", "vflip") for k in drawn) / len(drawn) - 1 / 3) < 0.05


def test_focus_kinds_rejects_unknown_and_absent_kinds():
    recs = _records({"grayscale": 4})
    with pytest.raises(SystemExit, match="unknown kind or category 'flipz'"):
        Batcher(recs, SFTConfig(focus_kinds="flipz"), seed=0)
    with pytest.raises(SystemExit, match="no cached samples"):
        Batcher(recs, SFTConfig(focus_kinds="hflip"), seed=0)


def test_growing_pool_draws_like_a_pool_built_at_once():
    recs = _records({"hflip": 50, "grayscale": 150})
    cfg = SFTConfig(batch_size=8, keep_prob=0.0, focus_kinds="geometry", focus_weight=3.0)
    whole = Batcher(recs, cfg, seed=0)
    grown = Batcher(recs[:20], cfg, seed=0)
    grown.add(recs[20:120])
    grown.add(recs[120:])
    assert len(grown) == len(whole) == 200
    # same records in the same order and weights: the same draws, bit for bit
    assert [b for _ in range(50) for b in grown.next()[2]] == [b for _ in range(50) for b in whole.next()[2]]
    empty = Batcher([], cfg, seed=1)  # live-only runs start empty and grow
    empty.add(recs)
    drawn = [it[2] for _ in range(300) for it in empty.next()[2]]
    assert abs(sum(k == "hflip" for k in drawn) / len(drawn) - 150 / 300) < 0.05  # 50*3 of 50*3 + 150


def test_live_samples_render_in_worker_processes():
    from training.data.live_data import LiveSamples

    live = LiveSamples(1, seed=0, corpus="", scales=(0.3, 1.0))  # no corpus: scikit-image photos
    try:
        raw = live.drain(wait_for=40, timeout=120)
    finally:
        live.close()
    assert len(raw) >= 40
    r = raw[0]
    assert r["source"].dtype == np.uint8 and r["source"].ndim == 3 and r["instructions"]
    assert len({x["kind"] for x in raw}) > 5
    # each sample's params travel with it (zoom proxy targets need the zoom's window)
    assert all(isinstance(x["params"], dict) for x in raw)
    assert all(x["params"]["where"] for x in raw if x["kind"] == "zoom")
    with pytest.raises(ValueError, match="at least one worker"):
        LiveSamples(0, seed=0)


def test_encode_records_matches_the_tokenizers_pil_path():
    from PIL import Image

    from training.data.pretokenize import encode_records

    vq = NanoVQ(block_out_channels=(16, 32, 32), fsq_levels=(4, 4, 4), norm_num_groups=8).eval()
    rng = np.random.default_rng(0)
    raw = [{"source": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
            "target": rng.integers(0, 255, (w, h, 3), dtype=np.uint8),  # rotated: another shape
            "instructions": ["x"], "reasoning": "r", "kind": "rotate90"}
           for h, w in [(32, 48), (48, 32), (32, 48), (32, 32)]]
    recs = encode_records(vq, raw, batch=2)
    for r, rec in zip(raw, recs, strict=True):
        src, tgt = vq.encode([Image.fromarray(r["source"]), Image.fromarray(r["target"])])
        assert np.array_equal(rec["src"], src) and np.array_equal(rec["tgt"], tgt)


def test_fresh_lm_keeps_the_tokenizers_of_init_and_takes_the_new_size(tmp_path):
    cfg = _tiny_setup(tmp_path)
    cfg.steps = 2
    train(cfg)
    train(cfg, export=str(tmp_path / "init"))
    init = load_bundle(tmp_path / "init")
    bigger = SFTConfig(init=str(tmp_path / "init"), fresh_lm=True, cache=cfg.cache, out=str(tmp_path / "big"),
                       hidden=96, layers=2, heads=2, kv_heads=2, intermediate=192, batch_size=2, steps=2, warmup=1,
                       threads=1, ckpt_every=2)
    train(bigger)
    train(bigger, export=str(tmp_path / "big-bundle"))
    big = load_bundle(tmp_path / "big-bundle")
    assert (big.lm.config.hidden_size, big.lm.config.num_hidden_layers) == (96, 2)
    assert init.lm.config.hidden_size == 64
    assert big.tokenizer.get_vocab() == init.tokenizer.get_vocab()
    assert all(torch.equal(a, b) for a, b in zip(big.vq.state_dict().values(), init.vq.state_dict().values(), strict=True))
    assert big.config.parent is None and big.config.notes["tokenizers_from"] == str(tmp_path / "init")


def test_a_run_from_a_bundle_keeps_its_instruction_reader(tmp_path):
    # checkpoints and exports are built in memory; the reader (understanding/) must still come along
    cfg = _tiny_setup(tmp_path)
    cfg.steps = 2
    train(cfg)
    train(cfg, export=str(tmp_path / "init"))
    (tmp_path / "init" / "understanding").mkdir()
    (tmp_path / "init" / "understanding" / "reader.json").write_text('{"marker": 1}')
    cont = SFTConfig(init=str(tmp_path / "init"), cache=cfg.cache, out=str(tmp_path / "cont"), batch_size=2,
                     steps=2, warmup=1, threads=1, ckpt_every=1)
    train(cont)
    assert (tmp_path / "cont" / "checkpoint" / "bundle" / "understanding" / "reader.json").is_file()
    train(cont, export=str(tmp_path / "cont-bundle"))  # from the checkpoint, as a resumed run would
    assert (tmp_path / "cont-bundle" / "understanding" / "reader.json").read_text() == '{"marker": 1}'


def test_trains_on_live_samples_only(tmp_path, capsys):
    cfg = _tiny_setup(tmp_path)
    bundle_dir = tmp_path / "init"
    cfg.steps = 2
    train(cfg, export=None)
    train(cfg, export=str(bundle_dir))
    live_cfg = SFTConfig(init=str(bundle_dir), cache="", out=str(tmp_path / "live"), live_workers=1,
                         corpus="", batch_size=2, steps=3, warmup=1, threads=1, ckpt_every=3, max_minutes=5)
    train(live_cfg)
    out = capsys.readouterr().out
    assert "(+ live, 1 workers)" in out
    assert torch.load(tmp_path / "live" / "checkpoint" / "state.pt", weights_only=False)["step"] == 3
    with pytest.raises(SystemExit, match="--live-workers"):
        train(SFTConfig(cache=str(tmp_path / "nothing"), out=str(tmp_path / "x")))
    # a corpus path without a corpus stops the run instead of rendering scikit-image's photos (test photos)
    with pytest.raises(SystemExit, match="no photo corpus"):
        train(SFTConfig(init=str(bundle_dir), cache="", out=str(tmp_path / "y"), live_workers=1,
                        corpus=str(tmp_path / "no-corpus"), steps=1))


def test_time_budget_ends_the_schedule_early_with_a_checkpoint(tmp_path, capsys):
    cfg = _tiny_setup(tmp_path)
    cfg.steps, cfg.max_minutes, cfg.ckpt_every = 100_000, 0.05, 100_000  # 3 s for a 100k-step plan
    train(cfg)
    out = capsys.readouterr().out
    assert "time budget" in out  # re-fitted to the time left, or stopped at the deadline
    step = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)["step"]
    assert 0 < step < 1000


def test_route_head_adds_the_routing_loss_of_geometric_edits(tmp_path, capsys):
    cfg = _tiny_setup(tmp_path)  # hflips only
    cfg.route_head, cfg.route_weight, cfg.steps, cfg.log_every, cfg.keep_prob = "0:1", 0.5, 10, 1, 0.0
    b = Batcher(load_cache(cfg.cache), cfg, seed=0)
    routes = [it[4] for _ in range(5) for it in b.next()[2]]
    assert all(r is not None and np.array_equal(r[1][0], [3, 2, 1, 0]) for r in routes)  # mirrored columns
    assert all(it[4] is None for it in Batcher(load_cache(cfg.cache), SFTConfig(batch_size=4), seed=0).next()[2])
    train(cfg)
    assert "route_nll" in capsys.readouterr().out
    cfg.route_head, cfg.out = "3:0", str(tmp_path / "run2")  # the tiny LM has one layer
    with pytest.raises(SystemExit, match="1 layers of 2 heads"):
        train(cfg)


def _turn_records(vq: NanoVQ, n: int) -> list[dict]:
    """Non-square 4×6 sources: quarter turns (6×4 targets) and flips (4×6 targets)."""
    rng = np.random.default_rng(2)
    recs = []
    for i in range(n):
        src = rng.integers(0, vq.codebook_size, (4, 6)).astype(np.uint16)
        turn = i % 2 == 0
        recs.append({
            "src": src, "tgt": np.rot90(src, -1).copy() if turn else src[:, ::-1].copy(),
            "kind": "rotate90" if turn else "hflip", "params": {"dir": "clockwise"} if turn else {},
            "instructions": ["Rotate it 90 degrees clockwise." if turn else "Mirror it."],
            "reasoning": "Change: turn it." if turn else "Change: mirror it.", "keep_reasoning": "Nothing to change.",
        })
    return recs


def test_quarter_turns_of_non_square_grids_train_the_header_choice(tmp_path, capsys):
    from engine.layout import parse_generation
    from engine.logprobs import collated_logprobs
    from training.train_sft import next_batch

    cfg = _tiny_setup(tmp_path)
    torch.save(_turn_records(NanoVQ.from_pretrained(cfg.vq), 12), tmp_path / "cache" / "shard_00000.pt")
    cfg.route_head, cfg.keep_prob, cfg.batch_size, cfg.steps = "0:1", 0.0, 4, 2
    train(cfg)  # two steps on batches of turned and unturned targets
    bundle = load_bundle(tmp_path / "run" / "checkpoint" / "bundle")
    assert bundle.config.transpose  # inference lets this model choose

    b = Batcher(load_cache(cfg.cache), cfg, seed=1)
    shapes = set()
    for _ in range(4):
        con, think, batch, weights, pairs, _ = next_batch(b, bundle.tokenizer, bundle.lm.config.vocab_size)
        assert con.transpose and con.shapes == ((4, 6), (6, 4))
        # the choice weighs cfg.header_weight in the loss, every other token 1
        assert weights is not None and set(weights[batch.rows == con.choice_row].tolist()) == {cfg.header_weight}
        assert set(weights[batch.rows != con.choice_row].tolist()) == {1.0}
        gens = [g[v].tolist() for g, v in zip(batch.gen, batch.valid, strict=True)]
        shapes |= {parse_generation(bundle.tokenizer, g, (4, 6), transpose=True)[1].shape for g in gens}
        at_choice = batch.rows == con.choice_row
        assert at_choice.sum(1).tolist() == [1] * len(gens)  # every sample's header choice is a choice
        with torch.no_grad():
            logp = collated_logprobs(bundle, batch, con)
        assert (logp[at_choice] < 0).all()  # and has a loss
        assert len(pairs) > 0  # the turns' cells are routed
    assert shapes == {(4, 6), (6, 4)}  # batches of one source shape hold both target shapes
    # the header is forced without the flag: no loss there
    cfg.transpose = False
    flips = [r for r in load_cache(cfg.cache) if r["kind"] == "hflip"]
    con_off = next_batch(Batcher(flips, cfg, seed=3), bundle.tokenizer, bundle.lm.config.vocab_size)[0]
    assert not con_off.transpose and con_off.choice_row == -1
    with pytest.raises(SystemExit, match="6 samples have the transposed target"):
        Batcher(load_cache(cfg.cache), cfg, seed=3)


def test_live_workers_stop_when_the_trainer_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "trainer.py"
    script.write_text(
        "import os, signal\n"
        "from training.data.live_data import LiveSamples\n"
        "if __name__ == '__main__':\n"
        "    live = LiveSamples(1, seed=0, corpus='', max_ready=64)\n"
        "    live.drain(wait_for=32, timeout=120)\n"
        "    print(live.procs[0].pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: as if the run were killed\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=repo, timeout=180)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    worker = int(res.stdout.split()[0])

    def running(pid: int) -> bool:  # an exited process may linger as a zombie until init reaps it
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.time() + 30
    while time.time() < deadline:
        if not running(worker):
            return  # the orphaned worker noticed and exited
        time.sleep(0.5)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the live-sample worker outlived its killed trainer by 30 s")


def test_edit_weight_lifts_the_changed_codes_of_local_edits_only():
    from engine.constraint import FreeFormConstraint
    from engine.text_tokenizer import build_nano_tokenizer
    from training.train_sft import edit_weights, sft_batch

    tok = build_nano_tokenizer(["Add a red ball.", "Make it grey.", "Reasoning text here."], 64, 300)
    src = np.arange(16, dtype=np.uint16).reshape(4, 4)
    local = src.copy()
    local[1, 2] = local[3, 0] = 63  # 2 of 16 codes: an object edit
    everything = (src + 1).astype(np.uint16)  # every code: a global edit
    for think in (False, True):
        con = FreeFormConstraint(tok, 4, 4, think, vocab_size=len(tok))
        items = [(src, local, "Add a red ball.", "Reasoning text here."),
                 (src, everything, "Make it grey.", "Reasoning text here.")]
        batch = sft_batch(tok, con, think, items)
        assert edit_weights(tok, batch, items, 1.0) is None
        w = edit_weights(tok, batch, items, 5.0)
        assert w.shape == batch.gen.shape
        assert (w[1] == 1).all()  # a global edit: no token singled out
        heavy = batch.gen[0][w[0] == 5]
        code_of = con.sp.code_of
        assert sorted(code_of[heavy].tolist()) == [63, 63]  # exactly the two changed codes
        assert int((w[0] == 5).sum()) == 2


def test_soft_code_targets_follow_the_fsq_digits():
    from engine.vq import FSQ
    from training.train_sft import fsq_digits, soft_code_targets

    levels = [7, 5, 5, 5, 5]
    fsq = FSQ(levels)
    codes = torch.tensor([0, 1234, 4374])
    # the same digits as the tokenizer's own quantizer (which reports them centred and scaled)
    half = fsq.levels // 2
    assert torch.equal(fsq_digits(codes, levels), fsq.quantized_from_codes(codes) * half + half)
    q = soft_code_targets(codes, levels, 0.5)
    assert q.shape == (3, 4375)
    assert torch.allclose(q.sum(-1), torch.ones(3))
    assert torch.equal(q.argmax(-1), codes)
    d = fsq_digits(torch.tensor(1234), levels)
    one_step = int((torch.tensor([d[0] + 1, *d[1:]]) * fsq.basis).sum())
    two_steps = int((torch.tensor([d[0] + 1, d[1] + 1, *d[2:]]) * fsq.basis).sum())
    assert q[1, one_step] > q[1, two_steps] > q[1, 0]
    assert soft_code_targets(codes, levels, 0.05)[1, 1234] > 0.999  # a narrow σ is the hard target
    with pytest.raises(ValueError):
        soft_code_targets(codes, levels, 0.0)


def test_soft_sigma_changes_the_loss_on_the_edit_codes_only():
    from engine.constraint import FreeFormConstraint
    from engine.text_tokenizer import build_nano_tokenizer
    from training.train_sft import SoftTargets, local_edit_codes, sft_batch, sft_loss, soft_targets

    cfg_levels = [4, 4, 4]
    vq = NanoVQ(block_out_channels=(16, 32, 32), fsq_levels=tuple(cfg_levels), norm_num_groups=8)
    tok = build_nano_tokenizer(["Add a red ball.", "Make it grey.", "Reasoning text here."], 64, 300)
    from transformers import Emu3ForCausalLM

    from engine.bundle import Bundle, BundleConfig
    from engine.tiny import tiny_lm_config

    torch.manual_seed(0)
    lm = Emu3ForCausalLM(tiny_lm_config(tok, 64, 1, 2, 2, 128)).eval()
    bundle = Bundle(BundleConfig(family="earl-nano", name="t", version="t", image_area=32 * 32, spatial_factor=8,
                                 codebook_size=64), lm, tok, vq, None, None)
    src = np.arange(16, dtype=np.uint16).reshape(4, 4)
    local = src.copy()
    local[1, 2] = local[3, 0] = 63
    everything = (src + 1).astype(np.uint16)
    con = FreeFormConstraint(tok, 4, 4, False, vocab_size=len(tok))
    items = [(src, local, "Add a red ball.", "Reasoning text here."),
             (src, everything, "Make it grey.", "Reasoning text here.")]
    batch = sft_batch(tok, con, False, items)
    mask = local_edit_codes(tok, batch, items)
    assert int(mask.sum()) == 2 and not mask[1].any()
    assert soft_targets(tok, batch, [(src, src, "x", "y"), (src, everything, "x", "y")], cfg_levels, 0.5) is None
    soft = soft_targets(tok, batch, items, cfg_levels, 0.5)
    assert soft.dist.shape == (2, 64)
    with torch.no_grad():
        hard, stats = sft_loss(bundle, con, batch)
        narrow, _ = sft_loss(bundle, con, batch, soft=soft_targets(tok, batch, items, cfg_levels, 0.01))
        wide, stats_w = sft_loss(bundle, con, batch, soft=soft)
        uniform = SoftTargets(mask, torch.full((2, 64), 1 / 64))
        flat, _ = sft_loss(bundle, con, batch, soft=uniform)
    assert torch.allclose(narrow, hard, atol=1e-5)  # σ → 0 is the one-hot target
    assert not torch.allclose(wide, hard)
    assert torch.equal(stats["nll_visual"], stats_w["nll_visual"])  # the reported NLL stays the hard one
    # a uniform target on two of the batch's tokens: the loss moves by exactly their change, averaged
    from engine.logprobs import collated_logprobs

    with torch.no_grad():
        logp, full = collated_logprobs(bundle, batch, con, return_full=True)
    vis = con.sp.visual_ids
    delta = (-full[mask][:, vis].mean(-1) + logp[mask]).sum() / batch.valid.sum()
    assert torch.allclose(flat - hard, delta, atol=1e-5)


def test_soft_sigma_trains_from_the_command_line_settings(tmp_path, capsys):
    cfg = _tiny_setup(tmp_path)
    recs = torch.load(tmp_path / "cache" / "shard_00000.pt", weights_only=False)
    for r in recs[:6]:  # object-like edits: two codes of sixteen change
        r["tgt"] = r["src"].copy()
        r["tgt"][0, :2] = (r["src"][0, :2] + 1) % 64
        r["kind"] = "add_shape"
    torch.save(recs, tmp_path / "cache" / "shard_00000.pt")
    cfg.soft_sigma = 0.5
    train(cfg)
    assert torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)["step"] == 3


def _kl_to_teacher(student, teacher, cfg, kinds: set[str]) -> float:
    """Mean KL(teacher ‖ student) over the image tokens of ``kinds`` in a few fixed batches."""
    from engine.logprobs import collated_logprobs

    batcher = Batcher(load_cache(cfg.cache), SFTConfig(batch_size=6, keep_prob=0.0, think_prob=0.0), seed=3)
    total, n = 0.0, 0
    for _ in range(4):
        shape, think, items = batcher.next()
        con = constraint_for(student.tokenizer, *shape, think, student.lm.config.vocab_size)
        batch = sft_batch(student.tokenizer, con, think, items)
        soft = teacher_targets(teacher, con, batch, items, kinds)
        if soft is None:
            continue
        with torch.no_grad():
            _, full = collated_logprobs(student, batch, con, return_full=True)
        log_s = torch.log_softmax(full[soft.mask][:, con.sp.visual_ids], -1)
        p = soft.dist
        total += float((p * (p.clamp_min(1e-30).log() - log_s)).sum())
        n += len(p)
    assert n > 0
    return total / n


def test_distill_from_pulls_the_chosen_kinds_to_the_teacher(tmp_path):
    cfg = _tiny_setup(tmp_path)
    recs = torch.load(tmp_path / "cache" / "shard_00000.pt", weights_only=False)
    for r in recs[::2]:
        r["kind"], r["tgt"] = "grayscale", (r["src"] + 1) % 64
    torch.save(recs, tmp_path / "cache" / "shard_00000.pt")
    cfg.steps, cfg.lr, cfg.ckpt_every = 40, 5e-3, 100  # a teacher sure of its codes, far from a fresh student
    train(cfg)
    train(cfg, export=str(tmp_path / "teacher"))
    cfg.out, cfg.seed, cfg.steps, cfg.lr = str(tmp_path / "s0"), 1, 1, 1e-3
    train(cfg)
    train(cfg, export=str(tmp_path / "student0"))
    # the students' cache teaches another grayscale (+2): distillation must follow the teacher (+1) instead
    (tmp_path / "other").mkdir()
    torch.save([{**r, "tgt": (r["src"] + 2) % 64} if r["kind"] == "grayscale" else r for r in recs],
               tmp_path / "other" / "shard_00000.pt")
    students = {}
    for name, distill in (("plain", ""), ("distilled", str(tmp_path / "teacher"))):
        run = SFTConfig(**{**cfg.__dict__, "cache": str(tmp_path / "other"), "init": str(tmp_path / "student0"),
                           "out": str(tmp_path / name), "distill_from": distill, "distill_kinds": "grayscale",
                           "steps": 30, "lr": 3e-3, "keep_prob": 0.0})
        train(run)
        train(run, export=str(tmp_path / f"{name}-bundle"))
        students[name] = load_bundle(tmp_path / f"{name}-bundle")
    teacher, s0 = load_bundle(tmp_path / "teacher"), load_bundle(tmp_path / "student0")

    # only the chosen kind's image tokens get the teacher's distributions, each summing to one
    shape, think, items = Batcher(recs, SFTConfig(batch_size=8, keep_prob=0.0), seed=0).next()
    con = constraint_for(teacher.tokenizer, *shape, think, teacher.lm.config.vocab_size)
    batch = sft_batch(teacher.tokenizer, con, think, items)
    soft = teacher_targets(teacher, con, batch, items, {"grayscale"})
    chosen = [it[5] == "grayscale" for it in items]
    assert soft.mask.any(1).tolist() == chosen
    assert int(soft.mask.sum()) == 16 * sum(chosen)  # a 4x4 grid's codes per chosen item
    assert torch.allclose(soft.dist.sum(-1), torch.ones(len(soft.dist)))
    assert teacher_targets(teacher, con, batch, items, {"sepia"}) is None

    before = _kl_to_teacher(s0, teacher, cfg, {"grayscale"})
    plain = _kl_to_teacher(students["plain"], teacher, cfg, {"grayscale"})
    distilled = _kl_to_teacher(students["distilled"], teacher, cfg, {"grayscale"})
    assert distilled < 0.7 * before and distilled < 0.7 * plain, (before, plain, distilled)


def test_distill_from_refuses_a_teacher_with_other_codes(tmp_path):
    import shutil

    cfg = _tiny_setup(tmp_path)
    cfg.steps = 1
    train(cfg)
    train(cfg, export=str(tmp_path / "teacher"))
    torch.manual_seed(5)  # another encoder: the same code numbers would mean other pictures
    shutil.rmtree(tmp_path / "teacher" / "vq")
    NanoVQ(block_out_channels=(16, 32, 32), fsq_levels=(4, 4, 4), norm_num_groups=8).save_pretrained(
        str(tmp_path / "teacher" / "vq"))
    cfg.out, cfg.distill_from, cfg.steps = str(tmp_path / "s"), str(tmp_path / "teacher"), 2
    with pytest.raises(SystemExit, match="encoder is not the student's"):
        train(cfg)
    cfg.distill_from, cfg.soft_sigma = str(tmp_path / "run" / "checkpoint" / "bundle"), 0.5
    with pytest.raises(SystemExit, match="exclusive"):
        train(cfg)


def test_cfg_dropout_empties_some_instructions_and_is_never_distilled(tmp_path):
    cfg = _tiny_setup(tmp_path)
    recs = load_cache(cfg.cache)
    on = Batcher(recs, SFTConfig(batch_size=8, keep_prob=0.0, cfg_dropout=0.5), seed=0)
    items = [it for _ in range(20) for it in on.next()[2]]
    dropped = [it for it in items if it[5] == "dropped"]
    assert 0.3 < len(dropped) / len(items) < 0.7
    assert all(it[2] == "" for it in dropped) and all(it[2] for it in items if it[5] != "dropped")
    # the targets stay the edit's: the empty instruction teaches p(target | source)
    assert all(np.array_equal(it[1], it[0][:, ::-1]) for it in dropped)
    with pytest.raises(SystemExit, match="cfg-dropout"):
        Batcher(recs, SFTConfig(cfg_dropout=1.0), seed=0)
    # off: the draws of a run without it, bit for bit
    a = Batcher(recs, SFTConfig(batch_size=8), seed=3).next()[2]
    b = Batcher(recs, SFTConfig(batch_size=8, cfg_dropout=0.0), seed=3).next()[2]
    assert [(it[2], it[5]) for it in a] == [(it[2], it[5]) for it in b]
    # the prompt of a dropped sample is the one guidance's image-only branch builds
    from engine.layout import build_prompt
    from engine.text_tokenizer import build_nano_tokenizer

    tok = build_nano_tokenizer(["Flip the photo horizontally.", "Mirror it."], NanoVQ.from_pretrained(cfg.vq).codebook_size,
                               text_vocab_size=300)
    con = constraint_for(tok, 4, 4, False, len(tok))
    batch = sft_batch(tok, con, False, dropped[:1])
    prompt = build_prompt(tok, dropped[0][0], "", False)
    assert batch.ids[0, : len(prompt)].tolist() == prompt
    assert build_prompt(tok, dropped[0][0], "Mirror it.", False) != prompt


def test_rich_language_rewords_instructions_never_with_a_heldout_text(tmp_path):
    from training import heldout_phrasings

    cfg = _tiny_setup(tmp_path)
    recs = [{**r, "params": {}} for r in load_cache(cfg.cache)]  # pretokenize keeps each sample's params
    cached = {t for r in recs for t in r["instructions"]}
    on = Batcher(recs, SFTConfig(batch_size=8, keep_prob=0.0, rich_language=1.0), seed=0)
    items = [it for _ in range(10) for it in on.next()[2]]
    texts = [it[2] for it in items]
    assert len(set(texts)) > len(texts) // 2 and not set(texts) & cached
    assert not {heldout_phrasings.normalise(t) for t in texts} & heldout_phrasings.texts()
    # off: the draws of a run without it, bit for bit
    a = Batcher(recs, SFTConfig(batch_size=8), seed=3).next()[2]
    b = Batcher(recs, SFTConfig(batch_size=8, rich_language=0.0), seed=3).next()[2]
    assert [(it[2], it[5]) for it in a] == [(it[2], it[5]) for it in b]
    with pytest.raises(SystemExit, match="rich-language"):
        Batcher(recs, SFTConfig(rich_language=1.5), seed=0)
