#!/usr/bin/env bash
# Continue EARL-nano's SFT on a lent GPU machine for a fixed number of minutes, with fresh samples
# rendered on all its cores (train_sft --live-workers). Run from the repository root:
#
#     OUT=runs/device MINUTES=8 bash recipes/earl_nano/device_sft.sh
#
# Writes to $OUT: sft.log (the run's log), lm.tar.partaa, lm.tar.partab, … (the exported bf16 LM +
# bundle.json, cut in 12 MB parts because the device tool returns files of at most 16 MiB: an 18M-parameter
# LM is 37 MB; join them with `cat lm.tar.part* | tar xf - -C <bundle>`; the bundle's tokenizer and image
# tokenizer are unchanged) and the TensorBoard events. Python packages missing on
# the machine travel as wheels in .whl/ (see /work/.library/device/README.md); SKIP_WHEELS=1 skips them.
# Carry only diffusers, importlib_metadata and lazy_importer there: the tracked tree is 54 MB and a call
# carries at most 64 MiB. The image's transformers 5.17 (with huggingface_hub 1.33) sampled the same tokens
# as our 5.24 on 4 edits of the shipped bundle on the CPU (plain and think).
# EXTRA adds train_sft flags, e.g. a capacity experiment: a new, larger LM on the bundle's tokenizers
#     EXTRA="--fresh-lm true --hidden 384 --layers 8 --heads 6 --kv-heads 6 --intermediate 1024 --warmup 300"
# or zooms taught as copied source cells (training.targets; later flags win over the defaults below):
#     EXTRA="--zoom-targets copy --focus-kinds zoom --focus-weight 8"
# VQ=<folder> swaps INIT's image tokenizer for another one with the same codebook size (e.g. an equivariant
# one from train_vq --equivariant) before training. The codes change, so INIT's LM must be one moved onto
# that tokenizer (recipes.earl_nano.remap_lm: v0.5's start) or be replaced (--fresh-lm). The exported LM then
# belongs with that tokenizer: copy it into the bundle's vq/ too. v0.5's SFT stage (session 10, H100):
#     python -m recipes.earl_nano.remap_lm --bundle assets/earl-nano --vq assets/nanovq-equivariant --out runs/remapped
#     INIT=runs/remapped VQ=assets/nanovq-equivariant MINUTES=8.6 LR=6e-4 SEED=3 bash recipes/earl_nano/device_sft.sh
#     INIT=/tmp/device-sft/bundle RUN=/tmp/device-sft2 MINUTES=3.2 LR=3e-4 SEED=5 bash recipes/earl_nano/device_sft.sh
# (runs/remapped is 37 MB: with the tracked tree it is over the device's 64 MiB, so session 10 copied its
# lm/ and bundle.json over assets/earl-nano's for the call and restored them after.)
set -u -o pipefail
OUT=${OUT:-runs/device}
MINUTES=${MINUTES:-8}
BATCH=${BATCH:-256}
LR=${LR:-6e-4}
INIT=${INIT:-assets/earl-nano}
RUN=${RUN:-/tmp/device-sft}
SEED=${SEED:-0}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}
mkdir -p "$OUT"
# The live samples' photos: data/ is ignored by git, so it travels only when the call carries it
# (carry: [".whl", "data/corpus"], 5.4 MB). Without it train_sft stops (it used to fall back silently
# to scikit-image's 4 photos, two of them test photos: see the model card, session 11).
[ -f data/corpus/manifest.jsonl ] || { echo "no data/corpus: carry it (python -m training.data.corpus build here)" >&2; exit 5; }
if [ -n "${VQ:-}" ]; then
  rm -rf /tmp/device-init && cp -r "$INIT" /tmp/device-init && rm -rf /tmp/device-init/vq \
    && cp -r "$VQ" /tmp/device-init/vq || exit 2
  INIT=/tmp/device-init
fi

if [ -d .whl ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -c "import torch, transformers, diffusers, peft, accelerate
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '',
      'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)
import training.train_sft" || exit 3
echo "cores $(nproc), live workers $WORKERS, batch $BATCH, lr $LR, $MINUTES min"

export PYTHONUNBUFFERED=1
# tqdm's carriage-return updates go to the log file; the console gets the periodic step lines
python3 -m training.train_sft --init "$INIT" --out "$RUN" --cache "" --live-workers "$WORKERS" \
  --batch-size "$BATCH" --lr "$LR" --warmup 100 --max-minutes "$MINUTES" --focus-kinds geometry,object \
  --focus-weight 3 --threads 2 --ckpt-every 1000 --log-every 20 --seed "$SEED" ${EXTRA:-} 2>&1 | tee "$OUT/sft.log" | tr '\r' '\n' \
  | grep --line-buffered -v '^sft:\|^Writing model shards\|^$'
python3 -m training.train_sft --out "$RUN" --cache "" --export "$RUN/bundle" || exit 4
if [ -n "${VQ:-}" ]; then  # the notes name INIT's copy; say which image tokenizer the LM was trained on
  python3 -c "import json, sys; p = sys.argv[1] + '/bundle.json'; c = json.load(open(p))
c.setdefault('notes', {})['image_tokenizer_from'] = sys.argv[2]; json.dump(c, open(p, 'w'), indent=2)" "$RUN/bundle" "$VQ"
fi
tar cf - -C "$RUN/bundle" bundle.json lm | split -b 12M - "$OUT/lm.tar.part"
cp "$RUN"/tb/events.* "$OUT"/ 2>/dev/null
ls -la "$OUT"
