"""engine.bundle: tiny random bundles, save -> load round trips, on-disk format, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import Emu3ForCausalLM

from engine import tokens as T
from engine.bundle import Bundle, BundleConfig, BundleError, default_bundle_path, load_bundle, save_bundle
from engine.grid_embed import GridEmbedding
from engine.tiny import make_tiny_random_bundle
from engine.vq import NanoVQ


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    path = tmp_path_factory.mktemp("b") / "tiny"
    return make_tiny_random_bundle(path, seed=3), path


def _ids(tok) -> torch.Tensor:
    names = [T.BOS, T.IMG_START, T.IMG_TOKEN, T.visual_token_name(0), T.visual_token_name(63), T.EOL, T.EOF]
    ids = [tok.convert_tokens_to_ids(n) for n in names] + tok.encode(" Make it gray.", add_special_tokens=False)
    return torch.tensor([ids])


def _logits(b: Bundle, ids: torch.Tensor) -> torch.Tensor:
    emb = b.lm.get_input_embeddings()(ids)
    if b.grid_embed is not None:  # exercise the grid embedding too: image 1, a few rows/cols
        n = ids.shape[1]
        pos = torch.arange(n).unsqueeze(0)
        emb = emb + b.grid_embed(torch.ones_like(pos), pos % 8, pos % 9)
    with torch.no_grad():
        return b.lm(inputs_embeds=emb).logits


def test_tiny_bundle_parts(made):
    b, path = made
    assert isinstance(b.lm, Emu3ForCausalLM) and isinstance(b.vq, NanoVQ)
    assert isinstance(b.grid_embed, GridEmbedding)
    assert b.config.family == "earl-nano" and b.config.spatial_factor == 8 and b.config.codebook_size == 64
    assert b.lm.config.vocab_size == len(b.tokenizer)
    assert b.lm.config.pad_token_id == b.tokenizer.pad_token_id
    assert b.lm.config.bos_token_id == b.tokenizer.bos_token_id
    assert b.lm.config.eos_token_id == b.tokenizer.eos_token_id
    assert b.lm.config.attention_dropout == 0.0 and b.lm.config._attn_implementation == "sdpa"
    assert not b.lm.training and b.path == path and b.device == torch.device("cpu")
    assert sum(p.numel() for p in b.lm.parameters()) < 1_000_000


def test_round_trip_identical_logits_and_codes(made):
    b, path = made
    loaded = load_bundle(path)
    assert loaded.lm.dtype == torch.float32 and not loaded.lm.training
    assert loaded.config == b.config
    ids = _ids(b.tokenizer)
    assert torch.equal(_logits(b, ids), _logits(loaded, ids))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert np.array_equal(b.vq.encode([img])[0], loaded.vq.encode([img])[0])
    assert loaded.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert loaded.weights_hash() == b.weights_hash()


def test_on_disk_format_is_bf16(made):
    _, path = made
    assert {p.name for p in path.iterdir()} >= {"bundle.json", "lm", "tokenizer", "vq"}
    for f in ("model.safetensors", "grid_embed.safetensors"):
        with safe_open(str(path / "lm" / f), "pt") as st:
            assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.bfloat16}
    assert json.loads((path / "lm" / "config.json").read_text())["dtype"] == "bfloat16"
    cfg = json.loads((path / "bundle.json").read_text())
    assert cfg["family"] == "earl-nano" and cfg["image_area"] == 64 * 64 and cfg["codebook_size"] == 64
    # A float32 save is possible too, and loads to the same numbers.
    b = load_bundle(path)
    p32 = path.parent / "f32"
    save_bundle(b, p32, dtype=None)
    with safe_open(str(p32 / "lm" / "model.safetensors"), "pt") as st:
        assert st.get_tensor(next(iter(st.keys()))).dtype == torch.float32
    assert torch.equal(_logits(b, _ids(b.tokenizer)), _logits(load_bundle(p32), _ids(b.tokenizer)))


def test_load_in_bf16(made):
    _, path = made
    b = load_bundle(path, dtype=torch.bfloat16)
    assert b.lm.dtype == torch.bfloat16 and b.grid_embed.row.weight.dtype == torch.bfloat16
    assert torch.isfinite(_logits(b, _ids(b.tokenizer)).float()).all()


def test_seed_determinism_and_hash():
    a, b, c = (make_tiny_random_bundle(seed=s) for s in (0, 0, 1))
    ids = _ids(a.tokenizer)
    assert torch.equal(_logits(a, ids), _logits(b, ids))
    assert a.weights_hash() == b.weights_hash() != c.weights_hash()
    assert len(a.weights_hash()) == 64
    state = torch.get_rng_state()
    make_tiny_random_bundle(seed=5)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


def test_hash_covers_grid_embed(made, tmp_path):
    _, path = made
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    b = load_bundle(copy)
    with torch.no_grad():
        b.grid_embed.row.weight[0, 0] += 1
    save_bundle(b, copy)  # overwrite in place
    assert load_bundle(copy).weights_hash() != load_bundle(path).weights_hash()


def test_save_replaces_existing_bundle_only(made, tmp_path):
    b, _ = made
    out = tmp_path / "x"
    save_bundle(b, out)
    (out / "stale.txt").write_text("old")
    save_bundle(b, out)  # an existing bundle is replaced as a whole
    assert not (out / "stale.txt").exists() and (out / "bundle.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    other = tmp_path / "documents"
    other.mkdir()
    (other / "thesis.txt").write_text("precious")
    with pytest.raises(BundleError, match="not a bundle; refusing"):
        save_bundle(b, other)
    assert (other / "thesis.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    save_bundle(b, tmp_path / "empty")


def test_no_grid_embed_bundle(tmp_path):
    b = make_tiny_random_bundle(tmp_path / "ng", grid_embed=False)
    loaded = load_bundle(tmp_path / "ng")
    assert loaded.grid_embed is None and b.grid_embed is None
    assert not (tmp_path / "ng" / "lm" / "grid_embed.json").exists()


def test_errors_are_clear(made, tmp_path):
    _, path = made
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        load_bundle(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path / "empty")

    def broken(name: str) -> object:
        p = tmp_path / name
        shutil.copytree(path, p)
        return p

    p = broken("badjson")
    (p / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(p)
    p = broken("family")
    cfg = json.loads((p / "bundle.json").read_text())
    (p / "bundle.json").write_text(json.dumps({**cfg, "family": "dalle"}))
    with pytest.raises(BundleError, match="unknown family 'dalle'"):
        load_bundle(p)
    p = broken("novq")
    shutil.rmtree(p / "vq")
    with pytest.raises(BundleError, match="vq/ folder is missing"):
        load_bundle(p)
    p = broken("codebook")
    (p / "bundle.json").write_text(json.dumps({**cfg, "codebook_size": 32}))
    with pytest.raises(BundleError, match="codebook_size"):
        load_bundle(p)
    p = broken("nolm")
    (p / "lm" / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="language model"):
        load_bundle(p)


def test_config_keeps_unknown_keys_in_notes():
    cfg = BundleConfig.from_json(json.dumps({"family": "emu3", "image_area": 65536, "future_field": 1}))
    assert cfg.family == "emu3" and cfg.notes == {"future_field": 1}
    assert BundleConfig.from_json(cfg.to_json()) == cfg


def test_default_bundle_path():
    p = default_bundle_path()
    assert p.name == "earl-nano" and p.parent.name == "assets" and (p.parent.parent / "engine").is_dir()


def test_conftest_fixture(tiny_bundle):
    assert tiny_bundle.path is not None and tiny_bundle.config.codebook_size == 64
    assert tiny_bundle.lm.dtype == torch.float32


def test_cli_info(made, tmp_path, capsys):
    from engine.bundle import main

    _, path = made
    assert main(["info", str(path)]) == 0
    assert "earl-nano" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "none")]) == 1
    assert "not found" in capsys.readouterr().out


def test_centred_grid_features_mirror_and_round_trip(tmp_path):
    """Mirroring a column flips the sign of the sin features and keeps the cos ones; the option survives
    save/load, and bundles saved without it load without it."""
    ge = GridEmbedding(8, centred_freqs=3)
    h, w = 3, 5
    image = torch.tensor([[0] + [2] * (h * (w + 1))])
    row = torch.tensor([[0] + [r for r in range(h) for _ in range(w + 1)]])
    col = torch.tensor([[0] + [c for _ in range(h) for c in range(w + 1)]])
    f = ge.centred_features(image, row, col, image > 0)[0, 1:].reshape(h, w + 1, 12)[:, :w]
    sin_x, cos_x = f[..., :3], f[..., 3:6]
    assert torch.allclose(sin_x, -sin_x.flip(1), atol=1e-6) and torch.allclose(cos_x, cos_x.flip(1), atol=1e-6)
    sin_y = f[..., 6:9]
    assert torch.allclose(sin_y, -sin_y.flip(0), atol=1e-6)
    ge.save(tmp_path / "c")
    back = GridEmbedding.load(tmp_path / "c")
    assert back.config["centred_freqs"] == 3
    assert torch.equal(back(image, row, col), ge(image, row, col))
    GridEmbedding(8).save(tmp_path / "plain")
    assert GridEmbedding.load(tmp_path / "plain").centred is None


def test_sampling_settings_validated_and_used_by_the_studio(tmp_path):
    from types import SimpleNamespace

    from engine.bundle import SAMPLING_DEFAULTS, sampling_defaults
    from engine.tiny import make_tiny_random_bundle
    from studio.models import ModelRegistry
    from studio.side_panel import sampling_for as _sampling_for

    assert sampling_defaults(BundleConfig()) == SAMPLING_DEFAULTS  # EARL's when a bundle says nothing
    for bad, msg in (({"temp": 0.7}, "unknown sampling setting 'temp'"), ({"top_p": 1.5}, "out of range"),
                     ({"temperature": "hot"}, "out of range"), ([0.7], "must be an object")):
        with pytest.raises(BundleError, match=msg):
            BundleConfig.from_json(json.dumps({"sampling": bad}))

    folder = tmp_path / "data" / "bundles" / "tuned"
    b = make_tiny_random_bundle(folder, seed=0, name="tuned")
    b.config.sampling = {"temperature": 0.7}
    save_bundle(b, folder)
    assert load_bundle(folder).config.sampling == {"temperature": 0.7}
    ctx = SimpleNamespace(registry=ModelRegistry(tmp_path / "data"))
    key = f"path:{folder.resolve()}"
    assert _sampling_for(ctx, key) == {**SAMPLING_DEFAULTS, "temperature": 0.7}
    assert _sampling_for(ctx, None) == SAMPLING_DEFAULTS
    assert _sampling_for(ctx, f"path:{tmp_path / 'missing'}") == SAMPLING_DEFAULTS  # error shown elsewhere
