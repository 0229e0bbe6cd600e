"""What every trainer shares: its config dataclass as command-line flags, checkpoints written atomically,
and the JSON progress file a job's watchers read.

Config → CLI: one ``--flag`` per dataclass field (``snake_case`` → ``--kebab-case``), typed from the
field's annotation. Booleans have one style: ``--flag`` / ``--no-flag``; an explicit value
(``--flag true``, ``--flag false``, also 1/0, yes/no) is read too, so written commands keep working.
Tuples of numbers are comma lists (``--channels 32,64,64``). Fields of other types (dicts) have no flag.

    cfg = parse_config(SFTConfig, argv)                   # or: ap = config_parser(SFTConfig); ap.add_argument(…)
    argv = config_argv(GRPOConfig, {"steps": 5, "lora": True})   # the inverse, for launching a trainer

Atomic writes: ``write_atomic(path, write)`` lets ``write`` fill a temporary file or folder beside
``path`` and then puts it in place, so a kill at any moment leaves the previous or the new version
complete; ``latest(path)`` finds it again (also a folder version caught between its two renames).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from engine.diskspace import free_bytes, is_no_space, no_space_error

C = TypeVar("C")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


# -- config → CLI -----------------------------------------------------------------------------------


def flag(name: str) -> str:
    """The command-line flag of a config field: ``fresh_lm`` → ``--fresh-lm``."""
    return "--" + name.replace("_", "-")


def parse_bool(s: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case)."""
    v = s.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


class BoolFlag(argparse.Action):
    """``--flag`` sets True, ``--no-flag`` False; ``--flag VALUE`` takes true/false (or 1/0, yes/no)."""

    def __init__(self, option_strings: list[str], dest: str, default: Any = None, help: str | None = None,
                 **kw: Any) -> None:
        opts = [o for s in option_strings for o in (s, "--no-" + s[2:]) if s.startswith("--")]
        super().__init__(opts, dest, nargs="?", default=default, metavar="true|false", help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        negated = bool(option_string and option_string.startswith("--no-"))
        if values is None:
            value = True
        else:
            try:
                value = parse_bool(values)
            except argparse.ArgumentTypeError as e:
                parser.error(f"{option_string}: {e}")
        setattr(namespace, self.dest, value != negated)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> Any:
    """``X | None`` → X (and X itself otherwise)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _tuple_of(tp: Any) -> type | None:
    """The element type of ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return args[0]
    return None


def _comma_list(elem: type) -> Callable[[str], tuple]:
    def parse(s: str) -> tuple:
        return tuple(elem(x.strip()) for x in s.strip().strip("()").split(",") if x.strip())

    parse.__name__ = f"comma list of {elem.__name__}"
    return parse


def config_parser(cls: type, **kw: Any) -> argparse.ArgumentParser:
    """An argparse parser (made with ``kw``, e.g. prog and description) with one flag per field of ``cls``."""
    ap = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
    defaults = cls()
    for name, tp in _field_types(cls).items():
        default = getattr(defaults, name)
        base = _unwrap_optional(tp)
        elem = _tuple_of(base)
        if base is bool:
            ap.add_argument(flag(name), action=BoolFlag, default=default)
        elif elem is not None:
            ap.add_argument(flag(name), type=_comma_list(elem), default=default, metavar=f"{elem.__name__},…")
        elif base in (int, float, str):
            ap.add_argument(flag(name), type=base, default=default)
        # other types (dicts, nested configs) are set in code, not on the command line
    return ap


def config_from(cls: type[C], args: argparse.Namespace | Mapping[str, Any]) -> C:
    """``cls`` built from the parsed ``args`` (other entries, e.g. extra flags, are left out)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names})


def parse_config(cls: type[C], argv: Sequence[str] | None = None, **kw: Any) -> C:
    """Parse ``argv`` (default: the process's arguments) into a ``cls``."""
    return config_from(cls, config_parser(cls, **kw).parse_args(argv))


def config_argv(cls: type, options: Mapping[str, Any]) -> list[str]:
    """Command-line arguments that ``config_parser(cls)`` parses back to ``options`` (field name → value);
    None values are left out (the field's default applies). Unknown names raise ValueError."""
    types_ = _field_types(cls)
    bad = [k for k in options if k not in types_]
    if bad:
        raise ValueError(f"unknown options {bad}; known: {sorted(types_)}")
    argv: list[str] = []
    for k, v in options.items():
        if v is None:
            continue
        if isinstance(v, bool):
            argv.append(flag(k) if v else "--no-" + flag(k)[2:])
        elif isinstance(v, (tuple, list)):
            argv += [flag(k), ",".join(map(str, v))]
        else:
            argv += [flag(k), str(v)]
    return argv


# -- atomic writes ----------------------------------------------------------------------------------


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_atomic(path: str | Path, write: Callable[[Path], None], what: str = "", need: int | None = None,
                 kept: str = "") -> Path:
    """Call ``write(tmp)`` to create a file or a folder at ``tmp`` (beside ``path``), then put it at ``path``.

    A file replaces the old one in one rename. A folder takes two: the old version moves to ``<path>.old``
    first, so at every moment one complete version exists (``latest`` finds it). Returns ``path``.

    A write that fails leaves no ``tmp`` behind and the previous version as it was. When the disk is full
    (the error says so, or less than ``need`` bytes are free: some writers report it as a generic error)
    it raises ``engine.diskspace.NoSpaceError`` naming the folder, the space needed, ``what`` was being
    saved and ``kept`` (what the person still has).
    """
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    _remove(tmp)
    try:
        write(tmp)
    except Exception as e:
        _remove(tmp)
        free = free_bytes(path.parent)
        if is_no_space(e) or (need is not None and free is not None and free < need):
            raise no_space_error(path.parent, need, what or str(path.name), kept) from e
        raise
    if not tmp.is_dir():
        os.replace(tmp, path)
        return path
    if path.exists():
        _remove(old)  # ``path`` is complete, so an older ``.old`` is not needed
        path.rename(old)
    tmp.rename(path)
    _remove(old)
    return path


def latest(path: str | Path, marker: str | None = None) -> Path | None:
    """``path`` as ``write_atomic`` left it: ``path`` itself, or ``<path>.old`` when a folder write was
    stopped between its two renames; None when neither exists. With ``marker``, a folder counts only
    when it holds that file (written last)."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".old")):
        if p.exists() and (marker is None or (p / marker).exists()):
            return p
    return None


# -- progress ---------------------------------------------------------------------------------------


class Progress:
    """The JSON progress file of a training job, for whoever watches it (``training.jobs``, the studio).

    ``{"state": "starting|running|done|failed|cancelled", "method", "step", "steps", "loss", "reward",
    "eta_s", "elapsed_s", "history": [{"step", "loss", "reward", ...}], "bundle": path when done,
    "message", "pid"}``, rewritten atomically so a reader never sees half a file. A ``path`` of None
    writes nothing (e.g. on processes other than the main one).
    """

    def __init__(self, path: str | Path | None, method: str, steps: int, start_step: int = 0,
                 history: list[dict] | None = None) -> None:
        self.path = Path(path) if path else None
        self.t0, self.start_step = time.time(), start_step
        self.data: dict[str, Any] = {"state": "starting", "method": method, "step": start_step, "steps": steps,
                                     "loss": None, "reward": None, "eta_s": None, "elapsed_s": 0.0,
                                     "history": list(history or []), "bundle": None, "message": "", "pid": os.getpid()}
        self._write()

    def step(self, step: int, **metrics: float | None) -> None:
        d = self.data
        d["state"] = "running"
        d["step"] = step
        d["elapsed_s"] = round(time.time() - self.t0, 1)
        done = step - self.start_step
        d["eta_s"] = round(d["elapsed_s"] / done * (d["steps"] - step), 1) if done > 0 else None
        for k, v in metrics.items():
            d[k] = v
        d["history"].append({"step": step, **{k: v for k, v in metrics.items() if v is not None}})
        self._write()

    def finish(self, state: str, message: str = "", **extra: Any) -> None:
        self.data.update(state=state, message=message, eta_s=0 if state == "done" else None, **extra)
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, lambda tmp: tmp.write_text(json.dumps(self.data)))
        except OSError as e:
            # A full disk must not turn a progress report into the trainer's crash (the checkpoint decides
            # what happens); the last complete file stays, and the job's watcher measures the disk itself.
            if not is_no_space(e):
                raise


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """The latest progress, or None when the file does not exist (yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
