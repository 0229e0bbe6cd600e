"""Model bundles: one folder holding everything needed to run an editing model.

```
bundle.json   BundleConfig (family, image_area, spatial_factor, codebook_size, ...)
lm/           Emu3ForCausalLM save_pretrained (+ grid_embed.json / grid_embed.safetensors when present)
tokenizer/    tokenizer save_pretrained
vq/           NanoVQ (family "earl-nano") or transformers Emu3VQVAE (family "emu3") save_pretrained
```

The LM is stored in bf16 by default (half the bytes, and bf16 is what it trains under) and loaded in
float32 on CPU unless told otherwise. The image tokenizer is stored and run in float32: it is small,
frozen, and its conv decoder is sensitive to rounding.

Tiny random bundles (tests, benchmarks) are made by ``engine.tiny``; emu3 bundles are built from
Emu3 / EARL checkpoints by ``engine.emu3_convert``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, Emu3ForCausalLM

from engine import tokens as T
from engine.grid_embed import GridEmbedding
from engine.sampler import SAMPLING_DEFAULTS
from engine.text_tokenizer import token_id
from engine.vq import ImageTokenizer, NanoVQ

BUNDLE_JSON = "bundle.json"
FAMILIES = ("earl-nano", "emu3")

class BundleError(ValueError):
    """A bundle folder that cannot be loaded, with a message saying what is wrong and where."""


@dataclass
class BundleConfig:
    family: str = "earl-nano"
    name: str = "earl-nano"
    version: str = "0"
    image_area: int = 128 * 128
    spatial_factor: int = 8
    codebook_size: int = 4096
    parent: str | None = None  # name/version (or weights hash) this bundle was fine-tuned from
    notes: dict[str, Any] = field(default_factory=dict)
    # Sampling settings measured best for this bundle (temperature / top_k / top_p); the studio starts
    # from them. The engine API's own defaults stay EARL's (SAMPLING_DEFAULTS), so evaluations and
    # RL candidates are comparable across bundles.
    sampling: dict[str, float] = field(default_factory=dict)
    # Whether the LM was trained to choose its output grid's header between the source's "H*W" and the
    # transposed "W*H" (``engine.constraint``'s ``transpose``: a quarter turn of a non-square photo). Only
    # then is that choice the model's: an LM trained with the header forced never learnt it, and would pick
    # either on any edit. Training that replays the choice sets it; converted Emu3 checkpoints leave it off.
    transpose: bool = False
    # The photo shapes (width / height) the LM was trained on. The engine shows the model a photo cropped to
    # the nearest of them (``engine.image_io.fit_to_bundle``): a grid shape it never saw can make it fail
    # on edits it does well otherwise. Empty: the photo's own shape.
    aspects: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "bundle.json") -> BundleConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise BundleError(f"{where} must hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        # Unknown keys are kept in notes rather than rejected, so newer bundles still load.
        extra = {k: v for k, v in data.items() if k not in known}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        if extra:
            cfg.notes = {**cfg.notes, **extra}
        if cfg.family not in FAMILIES:
            raise BundleError(f"{where}: unknown family {cfg.family!r}; expected one of {', '.join(FAMILIES)}")
        _check_sampling(cfg.sampling, where)
        return cfg


def _check_sampling(s: Any, where: str) -> None:
    if not isinstance(s, dict):
        raise BundleError(f"{where}: 'sampling' must be an object like {{\"temperature\": 0.7}}")
    for k, v in s.items():
        if k not in SAMPLING_DEFAULTS:
            raise BundleError(f"{where}: unknown sampling setting {k!r}; expected {', '.join(SAMPLING_DEFAULTS)}")
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
            v >= 0 if k == "temperature" else v >= 1 if k == "top_k" else 0 < v <= 1)
        if not ok:
            raise BundleError(f"{where}: sampling {k} = {v!r} is out of range")


def transpose_default(bundle: Any) -> bool:
    """Whether edits with ``bundle`` let the model turn a non-square grid (``BundleConfig.transpose``)."""
    return bool(getattr(getattr(bundle, "config", None), "transpose", False))


def sampling_defaults(config: BundleConfig) -> dict[str, float]:
    """EARL's sampling settings, overridden by the ones measured for this bundle."""
    return {**SAMPLING_DEFAULTS, **config.sampling}


@dataclass
class Bundle:
    config: BundleConfig
    lm: Emu3ForCausalLM
    tokenizer: Any  # a transformers tokenizer (PreTrainedTokenizerFast / TokenizersBackend)
    vq: ImageTokenizer
    grid_embed: GridEmbedding | None = None
    path: Path | None = None
    _hash: str | None = field(default=None, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype

    def weights_hash(self) -> str:
        """sha256 over the LM weights (+ grid embedding), computed once and cached.

        For a bundle loaded from disk it hashes the safetensors files as stored (cheap to recompute
        and identical on every machine); for an in-memory bundle it hashes the tensors. A bundle whose
        weights change in memory (training) should be saved and reloaded to get a new hash.
        """
        if self._hash is None:
            files = _weight_files(self.path / "lm") if self.path is not None else []
            self._hash = _hash_files(files) if files else _hash_tensors(self)
        return self._hash


def _weight_files(lm_dir: Path) -> list[Path]:
    if not lm_dir.is_dir():
        return []
    return sorted(p for p in lm_dir.iterdir() if p.suffix == ".safetensors")


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _hash_tensors(bundle: Bundle) -> str:
    h = hashlib.sha256()
    modules = [("lm", bundle.lm)] + ([("grid", bundle.grid_embed)] if bundle.grid_embed is not None else [])
    for prefix, module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_bundle_path() -> Path:
    """The shipped EARL-nano bundle: ``<repo>/assets/earl-nano``."""
    return Path(__file__).resolve().parent.parent / "assets" / "earl-nano"


# -- save ----------------------------------------------------------------------------------------


EXTRA_FOLDERS = ("understanding",)  # copied as they are when a bundle is saved again (fine-tuned, merged)


def save_bundle(bundle: Bundle, path: str | Path, dtype: torch.dtype | None = torch.bfloat16,
                extras_from: str | Path | None = None) -> Path:
    """Write ``bundle`` to the folder ``path`` (LM and grid embedding in ``dtype``; None keeps theirs).

    The data folders that travel with a model (``EXTRA_FOLDERS``: EARL-nano's instruction reader) are copied
    from ``extras_from``, by default the folder ``bundle`` was loaded from: a bundle built in memory from
    another one (a training snapshot, a fine-tuned copy) names its parent's folder, so it keeps reading
    instructions as its parent did.

    Written to a temporary sibling folder first and renamed into place, so an interrupted save never
    leaves a half-written bundle under ``path``. An existing bundle (or empty folder) at ``path`` is
    replaced; any other existing file or folder is refused rather than deleted.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / BUNDLE_JSON).is_file() or not any(path.iterdir()))):
        raise BundleError(f"{path} exists and is not a bundle; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        lm_dir = tmp / "lm"
        state = None
        if dtype is not None:
            state = {k: v.detach().to(dtype) for k, v in bundle.lm.state_dict().items()}
        bundle.lm.save_pretrained(str(lm_dir), state_dict=state)
        if dtype is not None:
            # save_pretrained records the in-memory dtype; config.json should say what is on disk.
            cfg_path = lm_dir / "config.json"
            lm_cfg = json.loads(cfg_path.read_text())
            lm_cfg["dtype"] = str(dtype).removeprefix("torch.")
            cfg_path.write_text(json.dumps(lm_cfg, indent=2, sort_keys=True) + "\n")
        if bundle.grid_embed is not None:
            ge = copy.deepcopy(bundle.grid_embed).cpu()
            if dtype is not None:
                ge = ge.to(dtype)
            ge.save(lm_dir)
        bundle.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        bundle.vq.save(tmp / "vq")
        # data folders that travel with the model (e.g. EARL-nano's instruction reader, understanding/)
        src = extras_from if extras_from is not None else getattr(bundle, "path", None)
        src = Path(src) if src is not None else None
        for extra in EXTRA_FOLDERS:
            if src is not None and (src / extra).is_dir():
                shutil.copytree(src / extra, tmp / extra)
        (tmp / BUNDLE_JSON).write_text(bundle.config.to_json())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# -- load ----------------------------------------------------------------------------------------


def read_bundle_config(path: str | Path) -> BundleConfig:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle folder not found: {path}")
    if not path.is_dir():
        raise BundleError(f"a bundle is a folder, but {path} is a file")
    cfg_file = path / BUNDLE_JSON
    if not cfg_file.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {BUNDLE_JSON}")
    return BundleConfig.from_json(cfg_file.read_text(), where=str(cfg_file))


def _safetensors_problem(f: Path) -> str | None:
    """Why the safetensors file ``f`` is cut short or garbled (its header says where every tensor ends),
    or None. Reads only the header, so the model picker can check every bundle cheaply."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                return f"{f.name} is cut short ({size} bytes)"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"{f.name} cannot be read ({e})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        return f"{f.name} is cut short ({size} of {8 + n + max(ends)} bytes)"
    return None


def bundle_problem(path: str | Path) -> str | None:
    """None when ``path`` looks like a complete bundle, else why not (no bundle.json, a missing part, a
    weight file cut short by an interrupted copy or save). Cheap: reads bundle.json and file headers."""
    path = Path(path)
    try:
        read_bundle_config(path)
    except BundleError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"its {BUNDLE_JSON} cannot be read ({e})"
    for sub in ("lm", "tokenizer", "vq"):
        if not (path / sub).is_dir():
            return f"the {sub}/ folder is missing"
    index = path / "lm" / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError) as e:
            return f"lm/{index.name} cannot be read ({e})"
        missing = sorted(s for s in shards if not (path / "lm" / s).is_file())
        if missing:
            return f"lm/ lacks the weight file(s) {', '.join(missing)}"
    elif not _weight_files(path / "lm"):
        return "lm/ holds no weights (*.safetensors)"
    for f in sorted(path.glob("*/*.safetensors")):
        problem = _safetensors_problem(f)
        if problem is not None:
            return f"{f.parent.name}/{problem}"
    return None


def load_bundle(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Bundle:
    """Load the bundle folder ``path``; the LM (and grid embedding) in ``dtype``, in eval mode.

    ``dtype`` None means float32 on CPU and bfloat16 on an accelerator.
    """
    path = Path(path)
    cfg = read_bundle_config(path)
    for sub in ("lm", "tokenizer", "vq"):
        if not (path / sub).is_dir():
            raise BundleError(f"bundle {path} is incomplete: the {sub}/ folder is missing")
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16

    try:
        lm = Emu3ForCausalLM.from_pretrained(
            str(path / "lm"), dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"cannot load the language model from {path / 'lm'}: {e}") from e
    lm.to(device).eval()
    grid = GridEmbedding.load(path / "lm")
    if grid is not None:
        grid.to(device=device, dtype=dtype).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot load the tokenizer from {path / 'tokenizer'}: {e}") from e

    vq: ImageTokenizer
    if cfg.family == "earl-nano":
        try:
            vq = NanoVQ.from_pretrained(str(path / "vq"), local_files_only=True)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot load the NanoVQ image tokenizer from {path / 'vq'}: {e}") from e
        vq.to(device).eval()
    else:
        from engine.emu3_vq import Emu3VisionTokenizer

        try:
            vq = Emu3VisionTokenizer.from_pretrained(path / "vq", device=device)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot load the Emu3 vision tokenizer from {path / 'vq'}: {e}") from e

    bundle = Bundle(config=cfg, lm=lm, tokenizer=tokenizer, vq=vq, grid_embed=grid, path=path)
    _check_consistency(bundle)
    return bundle


def _check_consistency(bundle: Bundle) -> None:
    """Catch mismatched parts early, with a message, instead of an index error mid-generation."""
    tok, cfg = bundle.tokenizer, bundle.config
    missing = [n for n in T.STRUCTURAL if n not in (T.THINK_START, T.THINK_END) and token_id(tok, n) is None]
    last_visual = T.visual_token_name(cfg.codebook_size - 1)
    if token_id(tok, last_visual) is None:
        missing.append(last_visual)
    if missing:
        raise BundleError(f"tokenizer of bundle {bundle.path} lacks tokens: {', '.join(missing)}")
    if bundle.vq.codebook_size != cfg.codebook_size:
        raise BundleError(
            f"bundle {bundle.path}: bundle.json says codebook_size {cfg.codebook_size}, "
            f"the image tokenizer has {bundle.vq.codebook_size}"
        )
    if bundle.vq.spatial_factor != cfg.spatial_factor:
        raise BundleError(
            f"bundle {bundle.path}: bundle.json says spatial_factor {cfg.spatial_factor}, "
            f"the image tokenizer has {bundle.vq.spatial_factor}"
        )
    vocab = bundle.lm.config.vocab_size
    if len(tok) > vocab:
        raise BundleError(f"bundle {bundle.path}: tokenizer has {len(tok)} tokens, the LM only {vocab}")


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.bundle info [PATH]`` — load a bundle and print what it holds."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.bundle", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="load a bundle and print what it holds")
    i.add_argument("path", nargs="?", default=str(default_bundle_path()))
    args = ap.parse_args(argv)
    try:
        b = load_bundle(args.path)
    except BundleError as e:
        print(f"error: {e}")
        return 1
    n = sum(p.numel() for p in b.lm.parameters())
    print(b.config.to_json())
    print(f"lm: {n / 1e6:.2f}M parameters, vocab {b.lm.config.vocab_size}; "
          f"grid embedding: {'yes' if b.grid_embed is not None else 'no'}; "
          f"vq: {type(b.vq).__name__}; weights sha256 {b.weights_hash()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
