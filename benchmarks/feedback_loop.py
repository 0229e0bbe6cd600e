"""Prove the loop end to end: ratings in the studio, the Fine-tune tab's one-click job, a blind A/B.

    python -m benchmarks.feedback_loop                       # 300 ratings, the tab's defaults
    python -m benchmarks.feedback_loop --quick               # a smoke test (a few minutes)
    python -m benchmarks.feedback_loop --ratings 150 --method kto --seed 1

Everything goes through the studio's public API (``gradio_client`` against ``launch.py`` started on a
temporary ``--data`` folder with the shipped default model), as a person's browser would:

1. ``training.eval`` scores the starting model on the held-out test split (before).
2. Simulated people edit train-split suite photos (``/edit``, the studio's default N candidates) and rate
   the results with the studio's own forms, mixed as people use them: A/B pairs (``/pair_a`` …), thumbs,
   stars (the candidate picked through ``/select_candidate``, as a click on it) and best-of-N. A rater sees
   the programmatic verifier's score of the image the studio returned plus Gaussian noise, and a share of
   the answers is random (people are inconsistent).
3. The Fine-tune tab's one-click job (``/finetune_start`` with the tab's defaults unless ``--method`` or
   ``--epochs`` say otherwise), watched through ``/finetune_poll`` and registered (``/finetune_register``).
4. The tab's blind A/B (``/ab_next``, ``/ab_left`` …) on held-out photos of the rated kinds, judged by
   another simulated rater (own seed, not one that gave training ratings); the win rate and its interval
   are read from the tab's own table.
5. ``training.eval`` on the new bundle (after): overall, and split into the rated and the other kinds.

The last line is ``feedback_loop ratings=N minutes=… winrate=… ci_low=… ci_high=… eval_before=…
eval_after=…`` (minutes: the training job's wall time; the result JSON also has its CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.finetune_tab import AB_SETS, METHODS
from studio.process import launched

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = {
    "global": ["grayscale", "sepia", "invert", "brighter", "darker", "more_contrast", "less_contrast",
               "more_saturation", "less_saturation", "warmer", "cooler"],
    "geometry": ["hflip", "vflip", "rotate90", "rotate180", "zoom"],
    "object": ["add_shape", "add_stamp", "remove", "recolour", "move", "resize", "replace"],
    "compose": ["compose"],
}
CATEGORIES_ALL = [k for ks in CATEGORIES.values() for k in ks]
# The Fine-tune tab's labels, by the short names used here: its methods and its held-out A/B sets.
METHOD_LABELS = {m: label for label, m in METHODS.items() if m in ("dpo", "kto")}
AB_SET_LABELS = {cats: label for label, cats in AB_SETS.items() if cats}
# How a simulated person spreads clicks over the studio's forms (share of edits rated with each form).
DEFAULT_MIX = "pair:0.35,thumb:0.25,star:0.2,best:0.2"


# -- the studio process ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def studio(data_dir: Path, log_path: Path, timeout_s: float = 300.0) -> Iterator[str]:
    """``launch.py --data data_dir`` (shipped default model) on a free port; yields its URL."""
    with launched(["--data", str(data_dir)], _free_port(), log_path, timeout_s=timeout_s) as url:
        yield url


# -- simulated people ------------------------------------------------------------------------------------


@dataclass
class Person:
    """A rater: sees the verifier's score plus ``noise`` points of Gaussian noise; answers at random with
    probability ``inconsistent``; calls pairs closer than ``tie_margin`` (noisy) a tie."""

    name: str
    noise: float = 1.0
    inconsistent: float = 0.15
    tie_margin: float = 0.2
    thumb_threshold: float = 5.0
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def seen(self, score: float) -> float:
        return score + self.rng.gauss(0.0, self.noise)

    def random_answer(self) -> bool:
        return self.rng.random() < self.inconsistent

    def pair(self, a: float, b: float) -> str:
        """'A' | 'B' | 'tie' for two true scores (A shown left)."""
        if self.random_answer():
            return self.rng.choice(["A", "B", "tie"])
        x, y = self.seen(a), self.seen(b)
        return "tie" if abs(x - y) <= self.tie_margin else ("A" if x > y else "B")

    def thumb(self, s: float) -> bool:
        if self.random_answer():
            return self.rng.random() < 0.5
        return self.seen(s) >= self.thumb_threshold

    def stars(self, s: float) -> int:
        if self.random_answer():
            return self.rng.randint(1, 5)
        return int(min(5, max(1, 1 + round(self.seen(s) / 10 * 4))))

    def best(self, scores: Sequence[float]) -> int:
        if self.random_answer():
            return self.rng.randrange(len(scores))
        seen = [self.seen(s) for s in scores]
        return int(np.argmax(seen))


def _score(sample: dict, image_path: str) -> float:
    from training import verifier

    out = Image.open(image_path).convert("RGB")
    return float(verifier.score(sample["source"], out, sample["target"], sample["mask"]).overall)


def _update_value(x: Any) -> Any:
    return x.get("value") if isinstance(x, dict) else x


def _pair_indices(out: Sequence[Any], a_slot: int) -> tuple[int, int] | None:
    """Gallery indices of the shown A/B pair from the labels 'A (#3)', 'B (#1)'."""
    idx = []
    for slot in (a_slot, a_slot + 1):
        m = re.search(r"#(\d+)", str((out[slot] or {}).get("label", "")) if isinstance(out[slot], dict) else "")
        if not m:
            return None
        idx.append(int(m.group(1)) - 1)
    return idx[0], idx[1]


def rate_edits(client: Any, model: str, person: Person, kinds: Sequence[str], n_ratings: int, candidates: int,
               seed: int, mix: dict[str, float], work: Path, temperature: float, log: Any) -> dict[str, Any]:
    """Edit train-split photos in the studio and rate them through its forms until ``n_ratings`` ratings
    stood; returns counts and agreement with the noiseless verifier."""
    from gradio_client import handle_file

    from training.data import suite

    stream = suite.stream("train", seed=seed, root=_corpus(), kinds=list(kinds))
    forms, weights = list(mix), [mix[k] for k in mix]
    rng = random.Random(seed + 17)
    given = {k: 0 for k in mix}
    right = wrong = 0
    edits = failed = 0
    true_scores: list[list[float]] = []  # per rated edit, its candidates' verifier scores in gallery order
    t0 = time.time()
    while sum(given.values()) < n_ratings:
        s = next(stream)
        src = work / f"src-{edits}.png"
        s["source"].save(src)
        out = client.predict(handle_file(str(src)), s["instruction"], candidates, False, temperature, 2048, 1.0,
                             seed * 100_000 + edits, False, model, person.name, api_name="/edit")
        edits += 1
        gallery = _update_value(out[4]) or []
        if len(gallery) < 2:
            print(f"edit {edits}: no candidates ({out[0]})", file=log, flush=True)
            failed += 1
            if failed >= 3:
                raise RuntimeError(f"{failed} edits in a row gave no candidates; the last said: {out[0]}")
            continue
        failed = 0
        paths = [g["image"] for g in gallery]
        scores = [_score(s, p) for p in paths]
        true_scores.append([round(x, 4) for x in scores])
        form = rng.choices(forms, weights)[0]
        left = n_ratings - sum(given.values())
        if form == "pair":
            shown = _pair_indices(out, 9)
            for _ in range(min(3, left)):
                if shown is None:
                    break
                i, j = shown
                v = person.pair(scores[i], scores[j])
                if scores[i] != scores[j] and v != "tie":
                    good = (v == "A") == (scores[i] > scores[j])
                    right, wrong = right + good, wrong + (not good)
                r = client.predict(person.name, api_name={"A": "/pair_a", "B": "/pair_b", "tie": "/pair_tie"}[v])
                given["pair"] += 1
                shown = _pair_indices(r, 1)
        elif form in ("thumb", "star"):
            for k in rng.sample(range(len(paths)), min(len(paths), left)):
                client.predict(k + 1, api_name="/select_candidate")  # candidate #k+1, as a click on it would
                if form == "thumb":
                    client.predict(person.name, api_name="/thumb_up" if person.thumb(scores[k]) else "/thumb_down")
                else:
                    client.predict(person.name, api_name=f"/star_{person.stars(scores[k])}")
                given[form] += 1
        else:
            k = person.best(scores)
            client.predict(k + 1, api_name="/select_candidate")
            client.predict(person.name, api_name="/best_of_n")
            given["best"] += 1
            if max(scores) > min(scores):
                good = scores[k] == max(scores)
                right, wrong = right + good, wrong + (not good)
        print(f"edit {edits} {s['kind']}: scores {' '.join(f'{x:.2f}' for x in scores)} form {form} "
              f"ratings {sum(given.values())}/{n_ratings} ({time.time() - t0:.0f} s)", file=log, flush=True)
    return {"edits": edits, "ratings": sum(given.values()), "by_form": given,
            "choices_with_a_gap_right": right, "choices_with_a_gap_wrong": wrong,
            "seconds": round(time.time() - t0, 1), "true_scores": true_scores}


def pair_quality(data_dir: Path, true_scores: list[list[float]]) -> dict[str, dict[str, float]]:
    """How well the training pairs the ratings gave (``feedback.pairs.rated_pairs``, what DPO trains on)
    point the right way, by source: pairs whose chosen candidate the verifier scores higher (right), lower
    (wrong) or the same (equal, often two failures), and the mean score gap. Read from the store after
    rating, from a store that holds the rated edits only (the benchmark's own): its edits in the order they were
    made, ``true_scores`` in the same order."""
    from feedback.pairs import rated_pairs
    from feedback.store import Store

    with Store(data_dir) as store:
        by_edit: dict[str, list[Any]] = {}
        for c in store.candidates():
            if not (c.settings or {}).get("ab_test"):
                by_edit.setdefault(c.edit_uid, []).append(c)
        edits = sorted(by_edit.values(), key=lambda cs: min(c.id for c in cs))
        true = {c.id: scores[c.idx] for cs, scores in zip(edits, true_scores, strict=False) for c in cs}
        out: dict[str, dict[str, float]] = {}
        for chosen, rejected, kind in rated_pairs(store):
            if chosen.id not in true or rejected.id not in true:
                continue
            d = true[chosen.id] - true[rejected.id]
            q = out.setdefault(kind, {"right": 0, "wrong": 0, "equal": 0, "gap": 0.0})
            q["right" if d > 0 else "wrong" if d < 0 else "equal"] += 1
            q["gap"] += abs(d)
    for q in out.values():
        n = q["right"] + q["wrong"] + q["equal"]
        q["gap"] = round(q["gap"] / n, 3)
        q["right_of_unequal"] = round(q["right"] / max(1, q["right"] + q["wrong"]), 3)
    return out


# -- fine-tune and blind A/B ---------------------------------------------------------------------------


def finetune(client: Any, data_dir: Path, base: str, method: str | None, epochs: int | None, max_minutes: float,
             log: Any) -> tuple[str, float, float]:
    """Start the tab's one-click job from ``base``, wait for it, register the bundle; returns (registry key,
    wall minutes, CPU minutes of the job)."""
    method_label = METHOD_LABELS[method] if method else METHOD_LABELS["dpo"]
    # the tab's own defaults: Epochs 3, Steps 200, the first reward, no judge, LoRA off
    args = [method_label, base, "", epochs if epochs else 3, 200, "Programmatic verifier (suite photos)", "", False]
    t0 = time.time()
    msg = client.predict(*args, api_name="/finetune_start")
    print(f"finetune_start: {msg}", file=log, flush=True)
    if "Started" not in str(msg[0] if isinstance(msg, (list, tuple)) else msg):
        raise RuntimeError(f"the job did not start: {msg}")
    state = ""
    job_id = re.search(r"job `([^`]+)`", str(msg[0])).group(1)  # type: ignore[union-attr]
    cpu = 0.0
    try:
        while True:
            time.sleep(5)
            cpu = max(cpu, _job_cpu_s(data_dir, job_id))
            st = client.predict(api_name="/finetune_poll")
            state = str(st[0])
            if any(w in state for w in ("**done**", "**failed**", "**cancelled**")):
                break
            if time.time() - t0 > max_minutes * 60:
                raise RuntimeError(f"the training job passed {max_minutes} minutes; cancelled. Last status: {state}")
    except BaseException:
        # a job outlives the studio by design (a person may restart it); the benchmark's must not
        client.predict(api_name="/finetune_cancel")
        raise
    minutes = (time.time() - t0) / 60
    print(f"job: {state}\n{st[2]}\njob CPU time {cpu:.0f} s", file=log, flush=True)
    if "**done**" not in state:
        raise RuntimeError(f"the training job ended without a bundle: {state}\n{st[2]}")
    reg = client.predict(api_name="/finetune_register")
    m = re.search(r"Registered: `([^`]+)`", str(reg[0]))
    if not m:
        raise RuntimeError(f"registering the bundle failed: {reg}")
    return f"path:{m.group(1)}", minutes, cpu / 60


def _job_cpu_s(data_dir: Path, job_id: str) -> float:
    """CPU seconds (user + system) the training job's process has used so far: on a machine shared with
    other work its wall time says little, its CPU time divided by the cores says what an idle machine
    would take. 0 when it cannot be read (the process has ended)."""
    try:
        pid = json.loads((data_dir / "jobs" / job_id / "job.json").read_text())["pid"]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, KeyError, IndexError):
        return 0.0


def blind_ab(client: Any, judge: Person, old_key: str, new_key: str, rounds: int, categories: str,
             heldout: list[dict], log: Any) -> str:
    """``rounds`` rounds of the tab's blind A/B, judged by ``judge``; returns the tab's final table."""
    by_instr: dict[str, list[dict]] = {}
    for s in heldout:
        by_instr.setdefault(s["instruction"], []).append(s)
    table = ""
    for k in range(rounds):
        out = client.predict(old_key, new_key, AB_SET_LABELS[categories], api_name="/ab_next")
        instr = str(out[0]).removeprefix("**Instruction:** ")
        src = np.asarray(Image.open(out[1]).convert("RGB"))
        match = [s for s in by_instr.get(instr, []) if np.array_equal(np.asarray(s["source"].convert("RGB")), src)]
        if not match:
            raise RuntimeError(f"round {k}: the shown held-out edit was not found ({instr!r})")
        s = match[0]
        a, b = _score(s, out[2]), _score(s, out[3])
        v = judge.pair(a, b)
        table = client.predict(judge.name, api_name={"A": "/ab_left", "B": "/ab_right", "tie": "/ab_tie"}[v])
        table = str(table[0] if isinstance(table, (list, tuple)) else table)
        print(f"A/B {k + 1}/{rounds} {s['kind']}: left {a:.2f} right {b:.2f} -> {v}", file=log, flush=True)
    return table


def parse_ab(table: str, bundle_id: str) -> tuple[int, float, float, float]:
    """(rounds, win rate, 95 % interval low, high) of ``bundle_id``: its rounds, wins and ties read from the
    tab's A/B table, the rate and interval recomputed unrounded with the tab's own ``wilson_interval``."""
    from studio.ratings import wilson_interval

    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == bundle_id and len(cells) >= 6:
            n, w, t = int(cells[1]), int(cells[2]), int(cells[3])
            lo, hi = wilson_interval(w + t / 2, n)
            return n, (w + t / 2) / n, lo, hi
    raise ValueError(f"{bundle_id} not in the A/B table:\n{table}")


# -- held-out eval ---------------------------------------------------------------------------------------


def _corpus() -> str | None:
    c = REPO / "data" / "corpus"
    return str(c) if (c / "manifest.jsonl").exists() else None


def run_eval(bundle: str, n_per_kind: int, kinds: Sequence[str] | None, out: Path, threads: int, seed: int,
             log: Any) -> dict:
    cmd = [sys.executable, "-m", "training.eval", "--bundle", bundle, "--n-per-kind", str(n_per_kind), "--fp16",
           "--threads", str(threads), "--seed", str(seed), "--out", str(out)]
    if kinds:
        cmd += ["--kinds", ",".join(kinds)]
    print("$ " + " ".join(cmd), file=log, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(out.read_text())


def kind_means(res: dict, kinds: Sequence[str]) -> float:
    vals = [s["model"] for s in res["samples"] if s["kind"] in set(kinds)]
    return float(np.mean(vals)) if vals else float("nan")


# -- main ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.feedback_loop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=int, default=300, help="ratings the simulated people give (default 300)")
    ap.add_argument("--rate", default="geometry,compose",
                    help="categories of edit the people make and rate (global, geometry, object, compose)")
    ap.add_argument("--candidates", type=int, default=4, help="candidates per edit (the studio's default N: 4)")
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"share of edits per rating form (default {DEFAULT_MIX})")
    ap.add_argument("--noise", type=float, default=1.0, help="raters' noise, verifier points (std)")
    ap.add_argument("--inconsistent", type=float, default=0.15, help="share of random answers")
    ap.add_argument("--temperature", type=float, default=0.7, help="the studio's sampling temperature for edits")
    ap.add_argument("--method", choices=sorted(METHOD_LABELS), default=None,
                    help="the tab's method (default: the tab's default)")
    ap.add_argument("--epochs", type=int, default=None, help="the tab's Epochs field (default: its default)")
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="cancel the training job after this many wall minutes (default 30; on a shared machine "
                         "give more and read the job's CPU minutes)")
    ap.add_argument("--ab-rounds", type=int, default=150, help="blind A/B comparisons (default 150)")
    ap.add_argument("--eval-n", type=int, default=4, help="held-out samples per kind for training.eval (default 4)")
    ap.add_argument("--threads", type=int, default=2, help="threads of training.eval")
    ap.add_argument("--seed", type=int, default=0, help="seeds the photos, the raters and the judge")
    ap.add_argument("--out", type=Path, default=None, help="keep the data folder, logs and results here")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier run's --out: start from a copy of its ratings and its eval before, so another "
                         "training setting is compared on the same ratings")
    ap.add_argument("--eval-before", type=Path, default=None,
                    help="an earlier training.eval --out JSON of the shipped model with the same --eval-n and --seed "
                         "(skips the before eval)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 12 ratings on 2 candidates, 1 epoch, 6 A/B rounds, eval of 2 kinds")
    a = ap.parse_args(argv)
    # a SIGTERM (kill, a timeout) unwinds like Ctrl-C, so the studio and a running job are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.quick:
        a.ratings, a.candidates, a.epochs, a.ab_rounds, a.eval_n = min(a.ratings, 12), 2, 1, min(a.ab_rounds, 6), 1
    rated_cats = [c for c in a.rate.split(",") if c]
    bad = [c for c in rated_cats if c not in CATEGORIES]
    if bad or ",".join(rated_cats) not in AB_SET_LABELS:
        ap.error(f"--rate: use one of {', '.join(AB_SET_LABELS)} (got {a.rate})")
    rated = [k for c in rated_cats for k in CATEGORIES[c]]
    others = [k for c in CATEGORIES if c not in rated_cats for k in CATEGORIES[c]]
    mix = {k: float(v) for k, v in (p.split(":") for p in a.mix.split(","))}
    if set(mix) - {"pair", "thumb", "star", "best"}:
        ap.error("--mix forms: pair, thumb, star, best")

    from gradio_client import Client

    from engine.bundle import default_bundle_path
    from training.eval import load_samples

    root = (a.out or Path(tempfile.mkdtemp(prefix="feedback-loop-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if data.exists():
        ap.error(f"{data} already holds a store; pick a fresh --out")
    work = root / "work"
    work.mkdir(exist_ok=True)
    log = open(root / "log.txt", "a")  # noqa: SIM115 - closed at the end
    print(f"feedback_loop: {vars(a)}; log {root / 'log.txt'}", flush=True)
    eval_kinds = (rated[:1] + others[:1]) if a.quick else None
    shipped = str(default_bundle_path())
    old_key = f"path:{default_bundle_path().resolve()}"  # the studio's key of its default model
    t_all = time.time()
    if a.reuse is not None:
        import shutil
        import sqlite3

        data.mkdir(parents=True)
        src, dst = sqlite3.connect(a.reuse / "data" / "feedback.sqlite3"), sqlite3.connect(data / "feedback.sqlite3")
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
        shutil.copytree(a.reuse / "data" / "images", data / "images")
        shutil.copyfile(a.reuse / "eval-before.json", root / "eval-before.json")
        before = json.loads((root / "eval-before.json").read_text())
    elif a.eval_before is not None:
        before = json.loads(a.eval_before.read_text())
        if before["n"] != a.eval_n * len(eval_kinds or CATEGORIES_ALL) or before["settings"].get("seed") != a.seed:
            ap.error(f"--eval-before {a.eval_before}: not an eval of --eval-n {a.eval_n} with --seed {a.seed}")
        (root / "eval-before.json").write_text(json.dumps(before))
    else:
        before = run_eval(shipped, a.eval_n, eval_kinds, root / "eval-before.json", a.threads, a.seed, log)
    print(f"eval before: {before['overall']['model']:.3f}", flush=True)
    person = Person("person", noise=a.noise, inconsistent=a.inconsistent, seed=a.seed)
    judge = Person("blind-judge", noise=a.noise, inconsistent=a.inconsistent, seed=a.seed + 1_000)
    heldout = load_samples(split="test")
    with studio(data, root / "studio.log") as url:
        client = Client(url, verbose=False, download_files=str(work / "downloads"))
        if a.reuse is not None:
            rated_info = json.loads((a.reuse / "rated.json").read_text())
        else:
            rated_info = rate_edits(client, old_key, person, rated, a.ratings, a.candidates, a.seed, mix, work,
                                    a.temperature, log)
        if "true_scores" in rated_info:
            rated_info["pairs"] = pair_quality(data, rated_info["true_scores"])
        (root / "rated.json").write_text(json.dumps(rated_info, indent=1))
        print(f"rated: { {k: v for k, v in rated_info.items() if k != 'true_scores'} }", flush=True)
        new_key, minutes, cpu_min = finetune(client, data, old_key, a.method, a.epochs, a.minutes, log)
        print(f"trained in {minutes:.1f} min ({cpu_min:.1f} CPU min): {new_key}", flush=True)
        table = blind_ab(client, judge, old_key, new_key, a.ab_rounds, ",".join(rated_cats), heldout, log)
    new_bundle = new_key[5:]
    new_cfg = json.loads((Path(new_bundle) / "bundle.json").read_text())
    n_ab, rate, lo, hi = parse_ab(table, f"{new_cfg['name']}@{new_cfg['version']}")
    print(table, flush=True)
    after = run_eval(new_bundle, a.eval_n, eval_kinds, root / "eval-after.json", a.threads, a.seed, log)
    result = {
        "args": {k: str(v) for k, v in vars(a).items()}, "rated": rated_info, "train_minutes": round(minutes, 2),
        "train_cpu_minutes": round(cpu_min, 2), "load_average": os.getloadavg(),
        "new_bundle": new_bundle, "ab": {"rounds": n_ab, "winrate": rate, "ci_low": lo, "ci_high": hi, "table": table},
        "eval_before": before["overall"]["model"], "eval_after": after["overall"]["model"],
        "eval_rated_kinds": [kind_means(before, rated), kind_means(after, rated)],
        "eval_other_kinds": [kind_means(before, others), kind_means(after, others)],
        "by_category": {c: [before["by_category"].get(c, {}).get("model"), after["by_category"].get(c, {}).get("model")]
                        for c in CATEGORIES},
        "total_minutes": round((time.time() - t_all) / 60, 1),
    }
    (root / "result.json").write_text(json.dumps(result, indent=1))
    log.close()
    print(f"held-out, rated kinds ({','.join(rated_cats)}): {result['eval_rated_kinds'][0]:.3f} -> "
          f"{result['eval_rated_kinds'][1]:.3f}; other kinds: {result['eval_other_kinds'][0]:.3f} -> "
          f"{result['eval_other_kinds'][1]:.3f}; total {result['total_minutes']} min; {root / 'result.json'}")
    print(f"feedback_loop ratings={rated_info['ratings']} minutes={minutes:.1f} winrate={rate:.3f} ci_low={lo:.3f} "
          f"ci_high={hi:.3f} eval_before={result['eval_before']:.3f} eval_after={result['eval_after']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
