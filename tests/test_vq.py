"""The FSQ image tokenizer: the equivariant option (codes that turn with the image) and its training script."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.vq import D4, NanoVQ, apply_d4, inverse_d4, invert_d4
from training.train_vq import VQTrainConfig, train


def tiny_equivariant_vq() -> NanoVQ:
    torch.manual_seed(0)
    vq = NanoVQ(block_out_channels=(16, 32), norm_num_groups=8, fsq_levels=(5, 3, 3), equivariant=True).eval()
    with torch.no_grad():  # large latents, so the rotating digits are not all rounded to 0
        vq.encoder.conv_out.weight.mul_(30)
    return vq


def photo_like(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 3, yy * 2 + xx, 255 - yy * 3], -1) % 256 + rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def tiny_corpus(tmp_path: Path) -> Path:
    """A corpus folder of three photo-like images: two train, one test."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = []
    for i, split in enumerate(["train", "train", "test"]):
        photo_like(96, 128, seed=i).save(corpus / f"p{i}.png")
        rows.append({"file": f"p{i}.png", "split": split})
    (corpus / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return corpus


def test_d4_helpers_invert_each_other():
    x = torch.arange(12.0).reshape(1, 3, 4)
    for k, flip in D4:
        assert torch.equal(invert_d4(apply_d4(x, k, flip), k, flip), x)
        assert torch.equal(apply_d4(apply_d4(x, k, flip), *inverse_d4(k, flip)), x)
    assert len({apply_d4(x, k, f).flatten().tolist().__str__() for k, f in D4}) == 8


def test_equivariant_codes_turn_with_the_image_for_all_8_symmetries():
    vq = tiny_equivariant_vq()
    x = torch.rand(2, 3, 24, 32) * 2 - 1  # not square: a quarter turn changes the grid's shape
    with torch.no_grad():
        codes = vq.codes_from_latents(vq.encode_latents(x))
        moved_only = []
        for k, flip in D4:
            turned = vq.codes_from_latents(vq.encode_latents(apply_d4(x, k, flip)))
            perm = torch.from_numpy(vq.code_permutation(k, flip))
            assert torch.equal(turned, perm[apply_d4(codes, k, flip)]), (k, flip)
            moved_only.append((turned == apply_d4(codes, k, flip)).float().mean().item())
    assert min(moved_only[1:]) < 0.9  # the permutation does real work: moving the grid alone is not enough


def test_pil_flips_through_the_engine_protocol():
    vq = tiny_equivariant_vq()
    img = photo_like(24, 32)
    src = vq.encode([img])[0]
    hflip = vq.encode([img.transpose(Image.FLIP_LEFT_RIGHT)])[0]
    vflip = vq.encode([img.transpose(Image.FLIP_TOP_BOTTOM)])[0]
    assert np.array_equal(hflip, vq.code_permutation(0, True)[src[:, ::-1]])
    assert np.array_equal(vflip, vq.code_permutation(2, True)[src[::-1, :]])


def test_code_permutations_form_the_group():
    vq = tiny_equivariant_vq()
    ident = np.arange(vq.codebook_size)
    quarter = vq.code_permutation(1, False)
    assert sorted(quarter.tolist()) == ident.tolist()  # a bijection
    four = ident
    for _ in range(4):
        four = quarter[four]
    assert np.array_equal(four, ident) and not np.array_equal(quarter, ident)
    mirror = vq.code_permutation(0, True)
    assert np.array_equal(mirror[mirror], ident)


def test_equivariant_flag_survives_save_and_load(tmp_path):
    vq = tiny_equivariant_vq()
    vq.save(tmp_path / "vq")
    back = NanoVQ.from_pretrained(tmp_path / "vq").eval()
    assert back.config.equivariant
    img = photo_like(32, 32, seed=3)
    assert np.array_equal(back.encode([img])[0], vq.encode([img])[0])


def test_plain_tokenizer_is_unchanged_and_has_no_permutation():
    plain = NanoVQ(block_out_channels=(16, 32), norm_num_groups=8, fsq_levels=(5, 3, 3)).eval()
    assert not plain.config.equivariant
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(plain.encode_latents(x), plain.fsq(plain._raw_latents(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="equivariant"):
        plain.code_permutation(0, True)


@pytest.mark.parametrize("levels", [(5, 4, 4), (5, 3, 5)])
def test_levels_that_cannot_turn_are_refused(levels):
    with pytest.raises(ValueError, match="odd FSQ levels"):
        NanoVQ(block_out_channels=(16, 32), norm_num_groups=8, fsq_levels=levels, equivariant=True)


def test_train_vq_equivariant_from_a_plain_init_resumes(tmp_path):
    corpus = tiny_corpus(tmp_path)
    plain = NanoVQ(block_out_channels=(16, 32, 32), norm_num_groups=8, fsq_levels=(5, 3, 3))
    plain.save(tmp_path / "plain")
    cfg = VQTrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), init=str(tmp_path / "plain"), equivariant=True,
                        steps=2, batch_size=2, crop=32, short_sides=(64,), eval_every=2, ckpt_every=1, threads=1)
    first = train(cfg)
    assert first["steps"] == 2 and np.isfinite(first["psnr"])
    trained = NanoVQ.from_pretrained(tmp_path / "run" / "final")
    assert trained.config.equivariant
    assert not torch.equal(trained.encoder.conv_in.weight, plain.encoder.conv_in.weight)
    more = train(VQTrainConfig(**{**cfg.__dict__, "steps": 3}))  # resumes from step 2's checkpoint
    assert more["steps"] == 3


def test_pretokenize_reencodes_another_caches_samples_for_some_kinds(tmp_path):
    import subprocess
    import sys

    rendered = tmp_path / "rendered"
    rendered.mkdir()
    raw = [{"source": np.asarray(photo_like(32, 32, seed=i)), "target": np.asarray(photo_like(32, 32, seed=i + 9)),
            "instructions": ["Do it."], "reasoning": "Because.", "kind": kind}
           for i, kind in enumerate(["hflip", "grayscale", "hflip"])]
    torch.save(raw, rendered / "raw_00000.pt")
    vq = tiny_equivariant_vq()
    vq.save(tmp_path / "vq")
    out = tmp_path / "eq_cache"
    cmd = [sys.executable, "-m", "training.data.pretokenize", "--vq", str(tmp_path / "vq"), "--out", str(out),
           "--raw-from", str(rendered), "--samples", "3", "--shard-size", "3", "--kinds", "hflip"]
    subprocess.run(cmd, check=True, capture_output=True)
    shard = torch.load(out / "shard_00000.pt", weights_only=False)
    assert [r["kind"] for r in shard] == ["hflip", "hflip"]
    assert np.array_equal(shard[1]["src"], vq.encode([Image.fromarray(raw[2]["source"])])[0])
    assert not (out / "raw_00000.pt").exists()  # the rendered samples stay where they were
    more = [a if a != "3" or cmd[i - 1] != "--samples" else "6" for i, a in enumerate(cmd)]
    missing = subprocess.run(more, capture_output=True, text=True)
    assert missing.returncode != 0 and "has no raw_00001.pt" in missing.stderr


def test_the_shipped_tokenizer_is_equivariant_on_a_real_photo():
    from pathlib import Path

    from engine.image_io import fit_to_area
    from training.train_vq import psnr

    assets = Path(__file__).resolve().parents[1] / "assets"
    vq = NanoVQ.from_pretrained(assets / "earl-nano" / "vq").eval()  # the shipped bundle's (v0.5 on)
    assert vq.config.equivariant and vq.dtype == torch.float32  # stored in bf16, runs in fp32
    photo = sorted((assets / "examples").glob("*.png")) + sorted((assets / "examples").glob("*.jpg"))
    img = fit_to_area(Image.open(photo[0]).convert("RGB"), 128 * 128, vq.spatial_factor)
    codes = vq.encode([img])[0]
    assert np.array_equal(vq.encode([img.transpose(Image.FLIP_LEFT_RIGHT)])[0], vq.code_permutation(0, True)[codes[:, ::-1]])
    turned = vq.encode([img.transpose(Image.ROTATE_180)])[0]
    assert np.array_equal(turned, vq.code_permutation(2, False)[codes[::-1, ::-1]])
    assert psnr(np.asarray(img), np.asarray(vq.decode([codes])[0])) > 18.0


def test_a_narrower_encoder_keeps_the_symmetry_and_survives_save_and_load(tmp_path):
    torch.manual_seed(1)
    vq = NanoVQ(block_out_channels=(16, 32), norm_num_groups=8, fsq_levels=(5, 3, 3), equivariant=True,
                encoder_block_out_channels=(8, 16)).eval()
    assert vq.encoder.conv_in.out_channels == 8 and vq.decoder.conv_in.out_channels == 32
    with torch.no_grad():
        vq.encoder.conv_out.weight.mul_(30)
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        codes = vq.codes_from_latents(vq.encode_latents(x))
        for k, flip in D4:
            turned = vq.codes_from_latents(vq.encode_latents(apply_d4(x, k, flip)))
            assert torch.equal(turned, torch.from_numpy(vq.code_permutation(k, flip))[apply_d4(codes, k, flip)])
    vq.save(tmp_path / "narrow")
    back = NanoVQ.from_pretrained(tmp_path / "narrow").eval()
    assert tuple(back.config.encoder_block_out_channels) == (8, 16)
    img = photo_like(32, 32, seed=5)
    assert np.array_equal(back.encode([img])[0], vq.encode([img])[0])
    with pytest.raises(ValueError, match="encoder_block_out_channels"):
        NanoVQ(block_out_channels=(16, 32), norm_num_groups=8, fsq_levels=(5, 3, 3), encoder_block_out_channels=(8,))


def test_distilled_encoder_learns_the_teachers_latents_and_resumes(tmp_path, capsys):
    from recipes.earl_nano.distill_vq_encoder import main as distil

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        photo_like(96, 128, seed=i).save(corpus / f"p{i}.png")
        rows.append({"file": f"p{i}.png", "split": split})
    (corpus / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    teacher = NanoVQ(block_out_channels=(16, 32, 32), norm_num_groups=8, fsq_levels=(5, 3, 3), equivariant=True)
    teacher.save(tmp_path / "teacher")
    args = ["--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "student"), "--corpus", str(corpus),
            "--channels", "8,16,16", "--crops", "16", "--crop", "32", "--batch-size", "8", "--threads", "1",
            "--ckpt-every", "10", "--warmup", "5", "--lr", "0.01"]
    assert distil([*args, "--steps", "30"]) == 0
    first = capsys.readouterr().out
    student = NanoVQ.from_pretrained(tmp_path / "student" / "final")
    assert student.config.equivariant and tuple(student.config.encoder_block_out_channels) == (8, 16, 16)
    for a, b in zip(student.decoder.parameters(), teacher.decoder.parameters(), strict=True):
        assert torch.equal(a, b)  # the teacher's decoder, untouched
    agreement = float(first.split("code_agreement=")[1].split()[0])
    assert 0.0 <= agreement <= 1.0
    mse_first, mse_last = (float(re.search(rf"{k}=([0-9.]+)", first).group(1)) for k in ("first", "last"))
    assert mse_last < mse_first  # it learns
    assert distil([*args, "--steps", "40"]) == 0
    assert "resumed at step 30" in capsys.readouterr().out


def test_crop_pool_colour_edits_are_the_suites_global_edits():
    from training.data.edits.kinds import GLOBAL_KINDS
    from training.train_vq import CropPool

    photo = photo_like(96, 96, seed=3)  # resized to 32² and cropped at 32²: the only crops are it and its mirror
    plain = CropPool([photo], (32,), 32, seed=5).batch(16)
    base = (plain[0].permute(1, 2, 0).numpy() + 1) * 0.5
    poses = [base, base[:, ::-1]]
    edited = CropPool([photo], (32,), 32, seed=5, colour_edits=1.0).batch(32)
    assert edited.min() >= -1 and edited.max() <= 1
    kinds = set()
    for e in edited:
        e = (e.permute(1, 2, 0).numpy() + 1) * 0.5
        match = [k.name for k in GLOBAL_KINDS for c in poses
                 if np.abs(np.clip(k.fn(c.astype(np.float32)), 0, 1) - e).max() < 1.5 / 255]
        assert match, "an edited crop that is no global edit of the photo"
        kinds.update(match)
    assert len(kinds) >= 6  # drawn among all 11 global edits, not one
    assert torch.equal(plain, CropPool([photo], (32,), 32, seed=5, colour_edits=0.0).batch(16))


def test_a_grown_decoder_starts_as_the_old_one_and_trains_with_the_same_codes(tmp_path):
    from training.train_vq import grow_decoder

    corpus = tiny_corpus(tmp_path)
    base = tiny_equivariant_vq()
    with torch.no_grad():  # a decoder that is not at its initial values
        for p in base.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    grown = grow_decoder(base, (2, 1)).eval()
    assert [len(b.resnets) for b in grown.decoder.up_blocks] == [len(b.resnets) + k for b, k in
                                                                zip(base.decoder.up_blocks, (2, 1), strict=True)]
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(grown.encode_latents(x), base.encode_latents(x))
        assert torch.allclose(grown(x), base(x), atol=1e-6)  # the new blocks start as the identity
    with pytest.raises(ValueError, match="decoder_extra_resnets"):
        NanoVQ(block_out_channels=(16, 32), norm_num_groups=8, fsq_levels=(5, 3, 3), decoder_extra_resnets=(1, 1, 1))

    base.save(tmp_path / "base")
    cfg = VQTrainConfig(corpus=str(corpus), out=str(tmp_path / "run"), init=str(tmp_path / "base"), decoder_only=True,
                        decoder_extra=(1,), steps=2, batch_size=2, crop=32, short_sides=(64,), eval_every=2,
                        ckpt_every=1, threads=1, lr=1e-2)
    assert train(cfg)["steps"] == 2
    trained = NanoVQ.from_pretrained(tmp_path / "run" / "final").eval()
    assert tuple(trained.config.decoder_extra_resnets) == (1,)
    new = trained.decoder.up_blocks[0].resnets[-1].conv2.weight
    assert new.abs().sum() > 0  # the new block learnt
    img = photo_like(32, 48, seed=7)
    assert np.array_equal(trained.encode([img])[0], base.encode([img])[0])  # same codes: the encoder is frozen
    assert train(VQTrainConfig(**{**cfg.__dict__, "steps": 3}))["steps"] == 3  # resumes with the grown decoder
    # growing a grown decoder again adds to its extras
    assert tuple(grow_decoder(trained, (0, 1)).config.decoder_extra_resnets) == (1, 1)
