"""emu3 bundles: a tiny checkpoint written in the real formats -> assemble -> load -> run.

Formats used: the LLM as ``Emu3ForCausalLM.save_pretrained`` (and as BAAI's original remote-code
config), the vision tokenizer as ``Emu3VQVAE.save_pretrained``, the tokenizer as an HF-converted Emu3
tokenizer (byte-level BPE tokenizer.json, class GPT2Tokenizer, Emu3's special-token names).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Emu3ForCausalLM, Emu3VQVAE

from engine import tokens as T
from engine.bundle import BundleError, load_bundle
from engine.emu3_convert import assemble_emu3_bundle
from engine.emu3_vq import Emu3VisionTokenizer, tiny_emu3_vqvae_config
from engine.text_tokenizer import token_id
from engine.tiny import tiny_lm_config

CODEBOOK = 64
# Emu3's tokenizer: Qwen's <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0..204|>, then the image
# markers and 32768 visual tokens (here: CODEBOOK of them).
EMU3_SPECIALS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    + [f"<|extra_{i}|>" for i in range(205)]
    + ["<|image start|>", "<|image end|>", "<|image token|>"]
)


def _write_emu3_tokenizer(folder, codebook: int = CODEBOOK) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["Make it grayscale.", "Flip the photo.", "Let's think step by step."] + ["32*32 32 32"] * 5, trainer)
    names = EMU3_SPECIALS + [T.visual_token_name(i) for i in range(codebook)]
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>", "pad_token": "<|endoftext|>",
    }))
    (folder / "tokenization_emu3.py").write_text("raise RuntimeError('remote code must never run')\n")


@pytest.fixture(scope="module")
def emu3_parts(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("emu3src")
    _write_emu3_tokenizer(root / "tok")
    tok = AutoTokenizer.from_pretrained(str(root / "tok"))
    torch.manual_seed(0)
    lm = Emu3ForCausalLM(tiny_lm_config(tok, hidden=32, layers=1, heads=2, kv_heads=1))
    lm.save_pretrained(str(root / "lm"))
    vq = Emu3VQVAE(tiny_emu3_vqvae_config(CODEBOOK)).eval()
    vq.save_pretrained(str(root / "vq"))
    return root, lm


def test_tiny_emu3_vq_encode_decode_shapes():
    torch.manual_seed(0)
    vt = Emu3VisionTokenizer(Emu3VQVAE(tiny_emu3_vqvae_config(CODEBOOK)))
    assert vt.spatial_factor == 8 and vt.codebook_size == CODEBOOK
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((16, 24), (16, 16))]
    grids = vt.encode(ims)
    assert [g.shape for g in grids] == [(2, 3), (2, 2)]
    assert all(g.dtype == np.int64 and g.min() >= 0 and g.max() < CODEBOOK for g in grids)
    out = vt.decode(grids)
    assert [im.size for im in out] == [(24, 16), (16, 16)] and out[0].mode == "RGB"
    # Decoding is deterministic and re-encoding the decoded pixels is well-formed.
    assert np.array_equal(np.asarray(vt.decode(grids[:1])[0]), np.asarray(out[0]))
    with pytest.raises(ValueError, match="multiple"):
        vt.encode([Image.new("RGB", (20, 16))])
    with pytest.raises(ValueError, match="codes must lie"):
        vt.decode([np.full((2, 2), CODEBOOK)])


def test_assemble_load_and_run(emu3_parts, tmp_path):
    root, lm_src = emu3_parts
    out = assemble_emu3_bundle(root / "lm", root / "vq", root / "tok", tmp_path / "b")
    cfg = json.loads((out / "bundle.json").read_text())
    assert cfg["family"] == "emu3" and cfg["image_area"] == 256 * 256
    assert cfg["spatial_factor"] == 8 and cfg["codebook_size"] == CODEBOOK
    assert cfg["notes"]["think_markers"] == "text"  # Emu3's vocabulary has no think tokens
    assert not (out / "tokenizer" / "tokenization_emu3.py").exists()
    assert not (out / "lm" / "model.safetensors").is_symlink()

    b = load_bundle(out)
    assert isinstance(b.lm, Emu3ForCausalLM) and isinstance(b.vq, Emu3VisionTokenizer)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "vq" / "config.json").unlink()
    with pytest.raises(BundleError, match="Emu3 vision tokenizer"):
        load_bundle(broken)
    assert b.grid_embed is None and b.lm.config._attn_implementation == "sdpa"
    tok = b.tokenizer
    assert tok.convert_tokens_to_ids(T.BOS) == tok.bos_token_id
    assert token_id(tok, T.THINK_START) is None and token_id(tok, T.PAD) == tok.pad_token_id
    # The trap token_id avoids: in Emu3's own GPT2Tokenizer an unknown name maps to unk, which is
    # <|endoftext|>, i.e. our PAD.
    from transformers import AutoTokenizer

    src_tok = AutoTokenizer.from_pretrained(str(root / "tok"))
    assert type(src_tok).__name__ == "GPT2Tokenizer"
    assert src_tok.convert_tokens_to_ids(T.THINK_START) == src_tok.convert_tokens_to_ids(T.PAD)
    assert token_id(src_tok, T.THINK_START) is None
    ids = [tok.convert_tokens_to_ids(n) for n in (T.BOS, T.IMG_START)] + tok.encode("2*2", add_special_tokens=False)
    ids += [tok.convert_tokens_to_ids(T.IMG_TOKEN), tok.convert_tokens_to_ids(T.visual_token_name(5))]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = b.lm(x).logits
        ref = lm_src.eval()(x).logits
    assert logits.shape == (1, len(ids), b.lm.config.vocab_size)
    assert torch.allclose(logits, ref, atol=1e-5)  # stored in float32 by save_pretrained -> exact
    img = Image.new("RGB", (16, 16), (200, 30, 30))
    assert b.vq.decode(b.vq.encode([img]))[0].size == (16, 16)


def test_tokenizer_gets_emu3_qwen_pre_tokenizer(emu3_parts, tmp_path):
    import regex
    from transformers import AutoTokenizer

    from engine.emu3_convert import QWEN_PRETOKENIZE_REGEX

    root, _ = emu3_parts
    before = AutoTokenizer.from_pretrained(str(root / "tok"))
    assert len(before.tokenize("32*32")) < 5  # GPT-2 regex keeps "32" together
    out = assemble_emu3_bundle(root / "lm", root / "vq", root / "tok", tmp_path / "b", link=True)
    assert not (out / "tokenizer" / "tokenization_emu3.py").exists()
    assert not (out / "tokenizer" / "tokenizer.json").is_symlink()  # rewritten copy, source untouched
    assert json.loads((out / "bundle.json").read_text())["notes"]["pre_tokenizer"].startswith("qwen")
    tok = load_bundle(out).tokenizer
    assert tok.tokenize("32*32") == ["3", "2", "*", "3", "2"]
    # The pre-tokenizer splits exactly like the tiktoken pattern of Emu3's original tokenizer.
    text = "Make it 256x256, DON'T    blur!\n\n  It's 3-7 rows;   ünï 中文 ok  "
    assert tok.decode(tok.encode("cafe\u0301", add_special_tokens=False)) == "caf\u00e9"  # NFC, as Emu3
    spans = [text[a:b] for _, (a, b) in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    assert spans == regex.findall(QWEN_PRETOKENIZE_REGEX, text)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text



def test_assemble_with_links_and_remote_code_config(emu3_parts, tmp_path):
    root, _ = emu3_parts
    # BAAI's original format: model_type "Emu3", rope_theta, auto_map -> config rewritten, weights reused.
    remote = tmp_path / "remote_lm"
    remote.mkdir()
    cfg = json.loads((root / "lm" / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    # Keys exactly as baaivision/Emu3's Emu3Config writes them (emu3/mllm/configuration_emu3.py).
    cfg.update(model_type="Emu3", rope_theta=rope["rope_theta"], rope_scaling=None,
               auto_map={"AutoModelForCausalLM": "modeling_emu3.Emu3ForCausalLM"},
               img_token_id=3, boi_token_id=4, eoi_token_id=5, eol_token_id=6, eof_token_id=7,
               image_area=720 * 720, pretraining_tp=1, architectures=["Emu3ForCausalLM"])
    (remote / "config.json").write_text(json.dumps(cfg))
    os.symlink((root / "lm" / "model.safetensors").resolve(), remote / "model.safetensors")
    out = assemble_emu3_bundle(remote, root / "vq", root / "tok", tmp_path / "b", link=True)
    assert (out / "lm" / "model.safetensors").is_symlink() and (out / "vq" / "config.json").is_symlink()
    written = json.loads((out / "lm" / "config.json").read_text())
    assert written["model_type"] == "emu3_text_model" and "auto_map" not in written
    b = load_bundle(out)
    with torch.no_grad():
        assert torch.isfinite(b.lm(torch.tensor([[1, 2, 3]])).logits).all()


def test_assemble_errors_are_clear(emu3_parts, tmp_path):
    root, _ = emu3_parts
    with pytest.raises(BundleError, match="folder not found"):
        assemble_emu3_bundle(tmp_path / "none", root / "vq", root / "tok", tmp_path / "b")
    with pytest.raises(BundleError, match="not an Emu3 vision tokenizer"):
        assemble_emu3_bundle(root / "lm", root / "lm", root / "tok", tmp_path / "b")
    with pytest.raises(BundleError, match="holds a .* model, not an Emu3"):
        assemble_emu3_bundle(root / "vq", root / "vq", root / "tok", tmp_path / "b")
    small = tmp_path / "small_tok"
    _write_emu3_tokenizer(small, codebook=8)
    with pytest.raises(BundleError, match="lacks Emu3 tokens"):
        assemble_emu3_bundle(root / "lm", root / "vq", small, tmp_path / "b")
    (tmp_path / "exists").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        assemble_emu3_bundle(root / "lm", root / "vq", root / "tok", tmp_path / "exists")
    assert not (tmp_path / "b").exists()


def test_extract_parts_from_hf_multimodal_checkpoint(tmp_path):
    """Emu3ForConditionalGeneration (-hf) checkpoint -> lm/vq/tokenizer parts -> bundle, same numbers."""
    from transformers import AutoTokenizer, Emu3Config, Emu3ForConditionalGeneration

    from engine.emu3_convert import extract_emu3_hf_parts

    _write_emu3_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    text_cfg = tiny_lm_config(tok, hidden=32, layers=1, heads=2, kv_heads=1)
    cfg = Emu3Config(vq_config=tiny_emu3_vqvae_config(CODEBOOK).to_dict(), text_config=text_cfg.to_dict(),
                     vocabulary_map=tok.get_vocab())
    torch.manual_seed(1)
    full = Emu3ForConditionalGeneration(cfg).eval()
    hf = tmp_path / "hf"
    full.save_pretrained(str(hf))
    tok.save_pretrained(str(hf))

    parts = extract_emu3_hf_parts(hf, tmp_path / "parts", lm=True, max_shard_bytes=100_000)
    assert (parts["lm"] / "model.safetensors.index.json").exists()  # sharded on the small limit
    out = assemble_emu3_bundle(parts["lm"], parts["vq"], parts["tokenizer"], tmp_path / "bundle")
    b = load_bundle(out)
    ids = torch.tensor([[tok.bos_token_id, 5, 17, tok.convert_tokens_to_ids(T.visual_token_name(3))]])
    with torch.no_grad():
        assert torch.allclose(b.lm(ids).logits, full(input_ids=ids).logits, atol=1e-5)
        codes = torch.randint(0, CODEBOOK, (1, 2, 3))
        assert torch.allclose(b.vq.vqvae.decode(codes), full.model.vqmodel.decode(codes), atol=1e-5)
    with pytest.raises(BundleError, match="not a transformers Emu3ForConditionalGeneration"):
        extract_emu3_hf_parts(parts["lm"], tmp_path / "x")


def test_emu3_bundle_save_load_round_trip(emu3_parts, tmp_path):
    """A fine-tuned emu3 bundle is written back with save_bundle and loads to the same numbers."""
    from engine.bundle import save_bundle

    root, _ = emu3_parts
    b = load_bundle(assemble_emu3_bundle(root / "lm", root / "vq", root / "tok", tmp_path / "a"))
    save_bundle(b, tmp_path / "b", dtype=None)
    again = load_bundle(tmp_path / "b")
    assert again.config == b.config and isinstance(again.vq, Emu3VisionTokenizer)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.lm(ids).logits, b.lm(ids).logits)
    assert again.tokenizer.tokenize("32*32") == ["3", "2", "*", "3", "2"]
    codes = [np.arange(6).reshape(2, 3) % CODEBOOK]
    assert np.array_equal(np.asarray(again.vq.decode(codes)[0]), np.asarray(b.vq.decode(codes)[0]))


def _remote_vq_folder(src, dst, **overrides):
    """The tiny Emu3VQVAE rewritten in BAAI/Emu3-VisionTokenizer's remote-code config format."""
    cfg = json.loads((src / "config.json").read_text())
    remote = {"model_type": "Emu3VisionVQ", "auto_map": {"AutoModel": "modeling_emu3visionvq.Emu3VisionVQModel"},
              "codebook_size": cfg["codebook_size"], "embed_dim": cfg["embed_dim"],
              "z_channels": cfg["latent_channels"], "double_z": False, "in_channels": 3, "out_channels": 3,
              "temporal_downsample_factor": 4, "ch": cfg["base_channels"], "ch_mult": cfg["channel_multiplier"],
              "num_res_blocks": cfg["num_res_blocks"], "attn_resolutions": cfg["attn_resolutions"], "dropout": 0.0}
    remote.update(overrides)
    dst.mkdir()
    (dst / "config.json").write_text(json.dumps(remote))
    (dst / "modeling_emu3visionvq.py").write_text("raise RuntimeError('remote code must never run')\n")
    os.symlink((src / "model.safetensors").resolve(), dst / "model.safetensors")
    return dst


def test_remote_code_vision_tokenizer_is_converted(emu3_parts, tmp_path):
    root, _ = emu3_parts
    remote = _remote_vq_folder(root / "vq", tmp_path / "remote_vq")
    out = assemble_emu3_bundle(root / "lm", remote, root / "tok", tmp_path / "b")
    assert json.loads((out / "bundle.json").read_text())["notes"]["vq_config"].startswith("converted")
    assert not (out / "vq" / "modeling_emu3visionvq.py").exists()
    b = load_bundle(out)
    ref = Emu3VisionTokenizer.from_pretrained(root / "vq")
    codes = [np.arange(6).reshape(2, 3)]
    assert np.array_equal(np.asarray(b.vq.decode(codes)[0]), np.asarray(ref.decode(codes)[0]))
    # A config that does not describe the weights is refused, not loaded with random layers.
    wrong = _remote_vq_folder(root / "vq", tmp_path / "wrong_vq", num_res_blocks=2)
    with pytest.raises(BundleError, match="do not match an Emu3VQVAE"):
        assemble_emu3_bundle(root / "lm", wrong, root / "tok", tmp_path / "c")



def test_baai_tiktoken_tokenizer_folder_is_converted(emu3_parts, tmp_path):
    """EARL's tokenizer_path is BAAI/Emu3-Gen: emu3.tiktoken + emu3_vision_tokens.txt + remote code."""
    from transformers import AutoTokenizer

    from engine.text_tokenizer import convert_emu3_tiktoken
    from tests.test_text_tokenizer import _tiny_emu3_tiktoken

    root, _ = emu3_parts
    src = tmp_path / "baai_tok"
    ranks, _ = _tiny_emu3_tiktoken(src, codebook=CODEBOOK)
    (src / "tokenization_emu3.py").write_text("raise RuntimeError('remote code must never run')\n")
    (src / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_emu3.Emu3Tokenizer", None]}, "tokenizer_class": "Emu3Tokenizer"}))
    convert_emu3_tiktoken(src, tmp_path / "probe")
    probe = AutoTokenizer.from_pretrained(str(tmp_path / "probe"))
    assert len(probe) == len(ranks) + 208 + 3 + CODEBOOK
    lm_dir = tmp_path / "lm"
    torch.manual_seed(0)
    Emu3ForCausalLM(tiny_lm_config(probe, hidden=32, layers=1, heads=2, kv_heads=1)).save_pretrained(str(lm_dir))

    out = assemble_emu3_bundle(lm_dir, root / "vq", src, tmp_path / "b", link=True)
    notes = json.loads((out / "bundle.json").read_text())["notes"]
    assert notes["pre_tokenizer"].startswith("converted from emu3.tiktoken")
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    b = load_bundle(out)
    text = T.BOS + T.IMG_START + "2*3" + T.IMG_TOKEN + T.visual_token_name(9) + " Make the sky purple."
    assert b.tokenizer.encode(text, add_special_tokens=False) == probe.encode(text, add_special_tokens=False)
    assert b.tokenizer.bos_token_id == len(ranks) + 206
    with torch.no_grad():
        assert torch.isfinite(b.lm(torch.tensor([b.tokenizer.encode(text, add_special_tokens=False)])).logits).all()
    (src / "emu3_vision_tokens.txt").unlink()
    with pytest.raises(BundleError, match="no emu3_vision_tokens.txt"):
        assemble_emu3_bundle(lm_dir, root / "vq", src, tmp_path / "c")
