"""emu3 bundles from Emu3 / EARL checkpoints: configs translated, weights placed unchanged.

    python -m engine.emu3_convert assemble-emu3 --lm LM --vq VQ --tokenizer TOK --out BUNDLE [--link]
    python -m engine.emu3_convert extract-emu3-hf HF_CHECKPOINT OUT [--lm]

``assemble_emu3_bundle`` takes an LLM-only Emu3 checkpoint (EARL's releases), an Emu3 vision tokenizer
and an Emu3 tokenizer, in transformers' format or BAAI's original remote-code one (translated here, its
code never run), and writes a bundle folder that ``engine.bundle.load_bundle`` reads.
``extract_emu3_hf_parts`` splits a transformers ``Emu3-*-hf`` checkpoint into those parts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, Emu3TextConfig

from engine import tokens as T
from engine.bundle import BUNDLE_JSON, BundleConfig, BundleError
from engine.text_tokenizer import token_id

# Keys of the original BAAI remote-code Emu3 config that Emu3TextConfig names differently or drops.
_REMOTE_CODE_KEYS = ("auto_map", "architectures", "model_type", "rope_theta", "rope_scaling", "_name_or_path",
                     "torch_dtype", "transformers_version")
_LM_FILE_SUFFIXES = (".safetensors", ".json", ".bin")


def _emu3_lm_config(lm_dir: Path) -> dict:
    """config.json of an Emu3 LLM folder as a transformers-native Emu3TextConfig dict.

    Accepts transformers' own format (``model_type: emu3_text_model``) unchanged, and the original
    BAAI remote-code format (``model_type: Emu3``, ``rope_theta``, ``auto_map``), whose weight names
    are the same, by rewriting only the config. A full multimodal ``Emu3ForConditionalGeneration``
    checkpoint (``model_type: emu3`` with ``text_config``) is refused with a message.
    """
    cfg_file = lm_dir / "config.json"
    if not cfg_file.is_file():
        raise BundleError(f"{lm_dir} holds no language model: config.json is missing")
    cfg = json.loads(cfg_file.read_text())
    mt = cfg.get("model_type")
    if mt == Emu3TextConfig.model_type:
        return cfg
    if "text_config" in cfg or "vq_config" in cfg:
        raise BundleError(
            f"{lm_dir} is a full multimodal Emu3 checkpoint (Emu3ForConditionalGeneration); an emu3 bundle "
            "needs the LLM-only weights that load with Emu3ForCausalLM (as EARL's released checkpoints are)"
        )
    if str(mt).lower() != "emu3":
        raise BundleError(f"{lm_dir} holds a {mt!r} model, not an Emu3 language model")
    out = {k: v for k, v in cfg.items() if k not in _REMOTE_CODE_KEYS}
    rope = dict(cfg.get("rope_scaling") or {})
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope["rope_theta"] = cfg.get("rope_theta", Emu3TextConfig.default_theta)
    out.update(model_type=Emu3TextConfig.model_type, architectures=["Emu3ForCausalLM"], rope_parameters=rope)
    if cfg.get("torch_dtype"):
        out["dtype"] = cfg["torch_dtype"]
    return out


# The pre-tokenizer regex of Emu3's original tokenizer (baaivision/Emu3 emu3/mllm/tokenization_emu3.py:
# tiktoken with Qwen's PAT_STR, text NFC-normalised first), which EARL trained with.
# transformers' Emu3 conversion script writes GPT-2's ByteLevel regex instead, which groups digits
# ("32" vs "3", "2") and so encodes "H*W" headers and numbers differently.
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _qwen_pre_tokenizer(tokenizer_json: dict) -> bool:
    """Swap a plain GPT-2 ByteLevel pre-tokenizer for Emu3's Qwen one, in place; True when changed.

    Also adds the NFC normalisation that Emu3Tokenizer.tokenize applies before tiktoken.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        return False
    if tokenizer_json.get("normalizer") is None:
        tokenizer_json["normalizer"] = {"type": "NFC"}
    tokenizer_json["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }
    return True


# BAAI/Emu3-VisionTokenizer's remote-code config names -> transformers' Emu3VQVAEConfig names. Its weight
# names are already Emu3VQVAE's (transformers' conversion only prefixes them with "model.vqmodel.").
_REMOTE_VQ_KEYS = {"codebook_size": "codebook_size", "embed_dim": "embed_dim", "z_channels": "latent_channels",
                   "double_z": "double_latent", "in_channels": "in_channels", "out_channels": "out_channels",
                   "temporal_downsample_factor": "temporal_downsample_factor", "ch": "base_channels",
                   "ch_mult": "channel_multiplier", "num_res_blocks": "num_res_blocks",
                   "attn_resolutions": "attn_resolutions"}


def _emu3_vq_config(vq_dir: Path) -> tuple[dict, bool]:
    """(transformers Emu3VQVAE config dict, converted?) for ``vq_dir``; weights checked against it.

    transformers' own format (``model_type: emu3_vqgan``) is taken as is. BAAI's remote-code
    VisionTokenizer config is translated (``ch`` -> ``base_channels`` ...) and then every weight name and
    shape is checked against the Emu3VQVAE that config describes, so a wrong translation is an error
    here, never silently random weights.
    """
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    cfg_file = vq_dir / "config.json"
    if not cfg_file.is_file():
        raise BundleError(f"{vq_dir} holds no vision tokenizer: config.json is missing")
    raw = json.loads(cfg_file.read_text())
    if raw.get("model_type") == Emu3VQVAEConfig.model_type:
        return raw, False
    if not any(k in raw for k in ("ch", "ch_mult", "z_channels")):
        raise BundleError(
            f"{vq_dir} is not an Emu3 vision tokenizer (transformers Emu3VQVAE, model_type 'emu3_vqgan', or "
            f"BAAI/Emu3-VisionTokenizer's format); its config says model_type {raw.get('model_type')!r}"
        )
    kwargs = {new: raw[old] for old, new in _REMOTE_VQ_KEYS.items() if old in raw}
    if "base_channels" in kwargs and "channel_multiplier" in kwargs:  # attention width = last stage width
        kwargs["hidden_size"] = kwargs["base_channels"] * kwargs["channel_multiplier"][-1]
    config = Emu3VQVAEConfig(**kwargs)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Emu3VQVAE(config).state_dict().items()}
    found: dict[str, tuple] = {}
    for f in sorted(vq_dir.glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                found[k] = tuple(st.get_slice(k).get_shape())
    if not found:
        raise BundleError(f"{vq_dir}: only *.safetensors weights can be converted; none found")
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        shapes = [k for k in set(found) & set(expected) if found[k] != expected[k]][:3]
        raise BundleError(
            f"{vq_dir}: the weights do not match an Emu3VQVAE built from its config "
            f"(missing {missing}, unexpected {extra}, other shapes {shapes})"
        )
    out = config.to_dict()
    out["architectures"] = ["Emu3VQVAE"]
    return out, True


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(src.resolve(), dst)
    else:
        shutil.copy2(src, dst)


def assemble_emu3_bundle(
    lm_dir: str | Path,
    vq_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    link: bool = False,
    name: str = "emu3",
    version: str = "0",
    image_area: int = 256 * 256,
    qwen_pre_tokenizer: bool = True,
) -> Path:
    """Build an ``emu3`` bundle folder from local folders; returns ``out_dir``.

    - ``lm_dir``: LLM-only Emu3 weights that load with ``Emu3ForCausalLM`` (EARL's released
      checkpoints, ``mair-lab/earl-*``, are of this kind), in transformers' format or BAAI's original
      remote-code format (the config is rewritten; weights are taken unchanged).
    - ``vq_dir``: transformers' ``Emu3VQVAE.save_pretrained`` folder, or BAAI/Emu3-VisionTokenizer's
      remote-code folder (config translated, weight names/shapes checked strictly, no code run).
    - ``tokenizer_dir``: the HF-converted Emu3 tokenizer (tokenizer.json, class GPT2Tokenizer, as in
      ``Emu3-*-hf`` repos), or BAAI's original one (``emu3.tiktoken`` + ``emu3_vision_tokens.txt``, as in
      BAAI/Emu3-Gen, which EARL used; converted with ids kept, its remote code never run) — holding
      Emu3's structural token names and ``<|visual token NNNNNN|>`` for every VQ code.
    Files are copied (``link=False``) or symlinked (``link=True``). EARL's setting: ``image_area`` 256².
    ``qwen_pre_tokenizer``: when tokenizer.json has the GPT-2 ByteLevel regex that transformers' Emu3
    conversion writes, the bundle's copy gets the Qwen regex of Emu3's original tokenizer instead, so
    text (digits above all) is split the way EARL was trained (always a copy, never a link).
    """
    lm_dir, vq_dir, tokenizer_dir, out_dir = (Path(p) for p in (lm_dir, vq_dir, tokenizer_dir, out_dir))
    for label, d in (("language model", lm_dir), ("vision tokenizer", vq_dir), ("tokenizer", tokenizer_dir)):
        if not d.is_dir():
            raise BundleError(f"{label} folder not found: {d}")

    lm_cfg = _emu3_lm_config(lm_dir)
    weights = [p for p in lm_dir.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise BundleError(f"{lm_dir} holds no weight files (*.safetensors)")

    vq_cfg, vq_converted = _emu3_vq_config(vq_dir)
    codebook_size = int(vq_cfg.get("codebook_size", 32768))
    spatial_factor = 2 ** (len(vq_cfg.get("channel_multiplier", (1, 2, 2, 4))) - 1)

    from engine.text_tokenizer import EMU3_TIKTOKEN_FILE, EMU3_VISION_TOKENS_FILE, convert_emu3_tiktoken

    converted_tok: tempfile.TemporaryDirectory | None = None
    if (tokenizer_dir / EMU3_TIKTOKEN_FILE).is_file() and not (tokenizer_dir / "tokenizer.json").is_file():
        # BAAI's original tokenizer (tiktoken + remote code): converted, ids kept, no code run.
        if not (tokenizer_dir / EMU3_VISION_TOKENS_FILE).is_file():
            raise BundleError(f"{tokenizer_dir} has {EMU3_TIKTOKEN_FILE} but no {EMU3_VISION_TOKENS_FILE}")
        converted_tok = tempfile.TemporaryDirectory(prefix="emu3-tokenizer-")
        try:
            convert_emu3_tiktoken(tokenizer_dir, converted_tok.name)
        except ValueError as e:
            converted_tok.cleanup()
            raise BundleError(f"cannot convert the Emu3 tokenizer in {tokenizer_dir}: {e}") from e
    tok_src = Path(converted_tok.name) if converted_tok else tokenizer_dir
    try:
        tok = AutoTokenizer.from_pretrained(str(tok_src), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(
            f"cannot load the tokenizer in {tokenizer_dir} without remote code ({e}). Use an Emu3 tokenizer "
            "folder with tokenizer.json (Emu3-*-hf) or with emu3.tiktoken + emu3_vision_tokens.txt."
        ) from e
    required = [T.BOS, T.EOS, T.IMG_START, T.IMG_END, T.IMG_TOKEN, T.EOL, T.EOF, T.PAD,
                T.visual_token_name(0), T.visual_token_name(codebook_size - 1)]
    missing = [n for n in required if token_id(tok, n) is None]
    if missing:
        raise BundleError(f"tokenizer in {tokenizer_dir} lacks Emu3 tokens: {', '.join(missing)}")
    if len(tok) > int(lm_cfg.get("vocab_size", 0)):
        raise BundleError(f"tokenizer has {len(tok)} tokens but the language model only {lm_cfg.get('vocab_size')}")
    think = "tokens" if all(token_id(tok, n) is not None for n in (T.THINK_START, T.THINK_END)) else "text"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        raise BundleError(f"{out_dir} already exists; choose a new folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for p in sorted(lm_dir.iterdir()):
            if p.is_file() and p.suffix in _LM_FILE_SUFFIXES and p.name != "config.json":
                _place(p, tmp / "lm" / p.name, link)
        (tmp / "lm" / "config.json").write_text(json.dumps(lm_cfg, indent=2, sort_keys=True) + "\n")
        for p in sorted(vq_dir.iterdir()):
            if p.is_file() and p.suffix != ".py" and not (vq_converted and p.name == "config.json"):
                _place(p, tmp / "vq" / p.name, link)
        if vq_converted:
            (tmp / "vq" / "config.json").write_text(json.dumps(vq_cfg, indent=2, sort_keys=True) + "\n")
        pre_tokenizer = "converted from emu3.tiktoken (qwen)" if converted_tok else "as given"
        rewritten: dict[str, dict] = {}
        if converted_tok:
            for n in ("tokenizer.json", "tokenizer_config.json"):
                rewritten[n] = json.loads((tok_src / n).read_text(encoding="utf-8"))
        elif qwen_pre_tokenizer and (tokenizer_dir / "tokenizer.json").is_file():
            data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
            if _qwen_pre_tokenizer(data):
                rewritten["tokenizer.json"] = data
                # transformers 5's GPT2Tokenizer class rebuilds its own GPT-2 ByteLevel pre-tokenizer
                # and ignores tokenizer.json's; the generic backend class loads tokenizer.json as is.
                cfg_path = tokenizer_dir / "tokenizer_config.json"
                tok_cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
                tok_cfg["tokenizer_class"] = "TokenizersBackend"
                tok_cfg.pop("auto_map", None)
                rewritten["tokenizer_config.json"] = tok_cfg
                pre_tokenizer = "qwen (rewritten from GPT-2 ByteLevel)"
        (tmp / "tokenizer").mkdir(parents=True, exist_ok=True)
        for name_, data in rewritten.items():
            (tmp / "tokenizer" / name_).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        for p in sorted(tokenizer_dir.iterdir()):
            # never carry remote code along; vocab.json/merges.txt would let a slow path bypass tokenizer.json
            if not p.is_file() or p.suffix == ".py" or p.name in rewritten:
                continue
            if rewritten and p.name in ("vocab.json", "merges.txt", EMU3_TIKTOKEN_FILE, EMU3_VISION_TOKENS_FILE):
                continue
            if converted_tok and p.name in ("special_tokens_map.json", "added_tokens.json"):
                continue  # the remote-code class's files; the converted config says it all
            _place(p, tmp / "tokenizer" / p.name, link)
        cfg = BundleConfig(
            family="emu3", name=name, version=version, image_area=image_area, spatial_factor=spatial_factor,
            codebook_size=codebook_size, parent=None,
            notes={"sources": {"lm": str(lm_dir.resolve()), "vq": str(vq_dir.resolve()),
                               "tokenizer": str(tokenizer_dir.resolve())},
                   "linked": link, "think_markers": think, "pre_tokenizer": pre_tokenizer,
                   "vq_config": "converted from BAAI remote-code format" if vq_converted else "as given"},
        )
        (tmp / BUNDLE_JSON).write_text(cfg.to_json())
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if converted_tok is not None:
            converted_tok.cleanup()
    return out_dir

# Files of an HF Emu3 checkpoint that belong to its tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "added_tokens.json", "chat_template.jinja")


def _checkpoint_tensors(folder: Path):
    """(name, safetensors file) for every tensor of a safetensors checkpoint, sharded or not."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BundleError(f"{folder} holds no *.safetensors weights")
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                yield k, f


def _write_sharded(tensors, out: Path, max_shard_bytes: int) -> None:
    """Stream (name, loader) pairs into safetensors shards of at most ``max_shard_bytes`` (+ index)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = []
    weight_map: dict[str, int] = {}
    batch: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal batch, size
        if batch:
            shards.append(list(batch))
            save_file(batch, str(out / f".shard-{len(shards)}.safetensors"), metadata={"format": "pt"})
            batch, size = {}, 0

    for name, load in tensors:
        t = load().contiguous()
        n = t.numel() * t.element_size()
        if batch and size + n > max_shard_bytes:
            flush()
        batch[name] = t
        size += n
        total += n
        weight_map[name] = len(shards) + 1
    flush()
    if len(shards) == 1:
        os.replace(out / ".shard-1.safetensors", out / "model.safetensors")
        return
    names = {i: f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)}
    for i, fname in names.items():
        os.replace(out / f".shard-{i}.safetensors", out / fname)
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def extract_emu3_hf_parts(
    hf_dir: str | Path, out_dir: str | Path, *, lm: bool = False, max_shard_bytes: int = 4 << 30
) -> dict[str, Path]:
    """Split a transformers ``Emu3ForConditionalGeneration`` checkpoint (``Emu3-*-hf``) into parts.

    Writes ``out_dir/vq`` (Emu3VQVAE save_pretrained format, with the image processor config),
    ``out_dir/tokenizer`` and, when ``lm`` is True, ``out_dir/lm`` (Emu3ForCausalLM format) — the
    inputs ``assemble_emu3_bundle`` takes. EARL's use: its LLM-only checkpoint + the VQ and tokenizer
    of an Emu3 -hf checkpoint. Tensors are streamed one at a time, so memory stays at one shard.
    Returns {"vq": ..., "tokenizer": ..., ["lm": ...]}.
    """
    from safetensors import safe_open
    from transformers import Emu3VQVAEConfig

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    cfg_file = hf_dir / "config.json"
    if not cfg_file.is_file():
        raise BundleError(f"{hf_dir} holds no checkpoint: config.json is missing")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") != "emu3" or "vq_config" not in cfg or "text_config" not in cfg:
        raise BundleError(f"{hf_dir} is not a transformers Emu3ForConditionalGeneration checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)

    def loader(f: Path, k: str):
        def load() -> torch.Tensor:
            with safe_open(str(f), "pt") as st:
                return st.get_tensor(k)
        return load

    # On disk, transformers writes the original layout ("text_model.model.*", "text_model.lm_head.*",
    # "vqmodel.*"); checkpoints saved with save_original_format=False use "model.text_model.*",
    # "lm_head.*" and "model.vqmodel.*". Both map onto the standalone models' names.
    def rename(k: str) -> tuple[str, str] | None:
        for prefix, part, new in (("vqmodel.", "vq", ""), ("model.vqmodel.", "vq", ""),
                                  ("text_model.", "lm", ""), ("model.text_model.", "lm", "model."),
                                  ("lm_head.", "lm", "lm_head.")):
            if k.startswith(prefix):
                return part, new + k[len(prefix):]
        return None

    parts: dict[str, list] = {"vq": [], "lm": []}
    for k, f in _checkpoint_tensors(hf_dir):
        r = rename(k)
        if r is not None:
            parts[r[0]].append((r[1], loader(f, k)))
    if not parts["vq"]:
        raise BundleError(f"{hf_dir} has no vqmodel.* weights")

    result: dict[str, Path] = {}
    vq_cfg = Emu3VQVAEConfig(**{k: v for k, v in cfg["vq_config"].items()
                                if k not in ("model_type", "transformers_version", "architectures")})
    vq_dir = out_dir / "vq"
    _write_sharded(parts["vq"], vq_dir, max_shard_bytes)
    vq_cfg.save_pretrained(str(vq_dir))
    if (hf_dir / "preprocessor_config.json").is_file():
        shutil.copy2(hf_dir / "preprocessor_config.json", vq_dir / "preprocessor_config.json")
    result["vq"] = vq_dir

    tok_dir = out_dir / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    found = [n for n in _TOKENIZER_FILES if (hf_dir / n).is_file()]
    if not found:
        raise BundleError(f"{hf_dir} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])})")
    for n in found:
        shutil.copy2(hf_dir / n, tok_dir / n)
    result["tokenizer"] = tok_dir

    if lm:
        if not parts["lm"]:
            raise BundleError(f"{hf_dir} has no text_model.* weights")
        lm_dir = out_dir / "lm"
        _write_sharded(parts["lm"], lm_dir, max_shard_bytes)
        text_cfg = {k: v for k, v in cfg["text_config"].items() if k != "transformers_version"}
        text_cfg.update(model_type=Emu3TextConfig.model_type, architectures=["Emu3ForCausalLM"])
        (lm_dir / "config.json").write_text(json.dumps(text_cfg, indent=2, sort_keys=True) + "\n")
        result["lm"] = lm_dir
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.emu3_convert`` — build emu3 bundles from Emu3 / EARL checkpoint folders."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.emu3_convert", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("assemble-emu3", help="build an emu3 bundle from LLM, vision tokenizer and tokenizer folders")
    a.add_argument("--lm", required=True, help="LLM-only Emu3 checkpoint folder (e.g. an EARL release)")
    a.add_argument("--vq", required=True, help="Emu3VQVAE save_pretrained folder")
    a.add_argument("--tokenizer", required=True, help="HF-converted Emu3 tokenizer folder")
    a.add_argument("--out", required=True, help="new bundle folder")
    a.add_argument("--link", action="store_true", help="symlink the weights instead of copying them")
    a.add_argument("--name", default="emu3")
    a.add_argument("--image-area", type=int, default=256 * 256)
    x = sub.add_parser("extract-emu3-hf", help="split an Emu3-*-hf checkpoint into vq/, tokenizer/ [and lm/]")
    x.add_argument("hf_dir")
    x.add_argument("out_dir")
    x.add_argument("--lm", action="store_true", help="also write the language model (large)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "assemble-emu3":
            out = assemble_emu3_bundle(args.lm, args.vq, args.tokenizer, args.out, link=args.link,
                                       name=args.name, image_area=args.image_area)
            print(f"wrote {out}")
        else:
            for part, p in extract_emu3_hf_parts(args.hf_dir, args.out_dir, lm=args.lm).items():
                print(f"{part}: {p}")
    except BundleError as e:
        print(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
