#!/usr/bin/env bash
# Multi30k de->en beyond one model's beam, from the raw gzip files, on the CPU:
#   1. the forward model (recipes/multi30k-de-en-transformer-cpu.yaml), the reverse model
#      (recipes/multi30k-en-de-transformer-cpu.yaml) and an English LM that shares the forward
#      model's target tokenizer (recipes/multi30k-en-lm-rnn-cpu.yaml), each capped by max_time;
#   2. test_2016 with plain beam 5;
#   3. shallow fusion: lm_weight tuned on val by a grid of decode runs, then test_2016;
#   4. noisy-channel reranking: 12-best lists of val and test_2016, features forward, reverse,
#      lm and length, weights tuned on val (nmt tune), test_2016 reranked with them.
# Usage: bash bench/noisy_channel.sh OUT [SRC REF]
#   OUT    everything is written here: the models (OUT/fwd, OUT/rev, OUT/lm), the hypotheses
#          OUT/test2016.{beam5,fusion,rerank}.hyp, the tuned weights (OUT/fusion_weight.txt,
#          OUT/rerank_weights.json) and OUT/summary.json with every score and timing.
#   SRC REF  one more source and reference pair (plain or gzip): translated with the weights
#          tuned on val, untouched, into OUT/extra.{beam5,fusion,rerank}.hyp and scored.
# A model whose training finished in OUT (OUT/NAME/done) is reused, so that a run stopped after
# the training stages goes on from the decoding. Budgets (minutes) and the grid can be changed:
#   FWD_MINUTES=30 REV_MINUTES=25 LM_MINUTES=20 LM_RECIPE=recipes/multi30k-en-lm-rnn-cpu.yaml
#   NBEST=12 FUSION_GRID=0,0.05,0.1,0.15,0.2,0.3 DATA=../shared/data/multi30k
set -euo pipefail
if [ $# -ne 1 ] && [ $# -ne 3 ]; then
  echo "usage: bash bench/noisy_channel.sh OUT [SRC REF]" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
extra_src=${2:+$(realpath "$2")}
extra_ref=${3:+$(realpath "$3")}
cd "$repo"
data=$(realpath "${DATA:-../shared/data/multi30k}")
fwd_minutes=${FWD_MINUTES:-30}
rev_minutes=${REV_MINUTES:-25}
lm_minutes=${LM_MINUTES:-20}
lm_recipe=${LM_RECIPE:-recipes/multi30k-en-lm-rnn-cpu.yaml}
nbest=${NBEST:-12}
grid=${FUSION_GRID:-0,0.05,0.1,0.15,0.2,0.3}
for f in val.de.gz val.en.gz test_2016_flickr.de.gz test_2016_flickr.en.gz; do
  [ -f "$data/$f" ] || { echo "error: $data/$f not found; set DATA to the Multi30k folder" >&2; exit 1; }
done
times=$out/times.tsv
: > "$times"
start=$(date +%s)
# stage NAME CMD...: run CMD, and append NAME and its seconds to times.tsv
stage() {
  local name=$1 t0
  shift
  t0=$EPOCHREALTIME
  "$@"
  python -c 'import sys; print(f"{sys.argv[1]}\t{float(sys.argv[3]) - float(sys.argv[2]):.1f}")' \
    "$name" "$t0" "$EPOCHREALTIME" >> "$times"
  echo "== $name: $(tail -n 1 "$times" | cut -f2) s" >&2
}

# train NAME RECIPE MINUTES [--set ...]: tokenizer, preprocess and training into OUT/NAME
train() {
  local name=$1 recipe=$2 minutes=$3
  shift 3
  local sets=(--set "workdir=$out/$name" --set "train.max_time=$minutes" "$@")
  if [ -f "$out/$name/done" ]; then
    echo "== $name: reusing the model trained in $out/$name" >&2
    return
  fi
  stage "$name.tokenizer" nmt tokenizer "$recipe" "${sets[@]}"
  stage "$name.preprocess" nmt preprocess "$recipe" "${sets[@]}"
  stage "$name.train" nmt train "$recipe" "${sets[@]}" --overwrite
  touch "$out/$name/done"
}

# checkpoint WORKDIR: averaged.pt when it validated at least as well as best.pt, else best.pt
checkpoint() {
  python - "$1" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
records = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines() if l]
def dev(r):
    return r.get("dev_bleu", -r.get("dev_loss", float("inf")))
best = max((dev(r) for r in records if r.get("event") == "valid"), default=float("-inf"))
averaged = [dev(r) for r in records if r.get("event") == "averaged"]
use_avg = (work / "checkpoints/averaged.pt").is_file() and averaged and averaged[-1] >= best
print(work / "checkpoints" / ("averaged.pt" if use_avg else "best.pt"))
PY
}

train fwd recipes/multi30k-de-en-transformer-cpu.yaml "$fwd_minutes"
train rev recipes/multi30k-en-de-transformer-cpu.yaml "$rev_minutes"
train lm "$lm_recipe" "$lm_minutes" --set "tokenizer.model=$out/fwd/tokenizer/joint.model"
fwd=$(checkpoint "$out/fwd")
rev=$(checkpoint "$out/rev")
lm=$out/lm/checkpoints/best.pt
echo "== forward $fwd, reverse $rev, LM $lm" >&2

zcat "$data/val.de.gz" > "$out/val.de"
zcat "$data/val.en.gz" > "$out/val.en"
zcat "$data/test_2016_flickr.de.gz" > "$out/test2016.de"
zcat "$data/test_2016_flickr.en.gz" > "$out/test2016.en"
if [ -n "$extra_src" ]; then
  zcat -f "$extra_src" > "$out/extra.src"
  zcat -f "$extra_ref" > "$out/extra.ref"
fi
stage lm.score nmt score -m "$lm" -i "$out/test2016.en" --json -o "$out/lm_test2016.json"

# decode SET: beam 5, the n-best list and its features for OUT/SET.de (or extra.src)
decode() {
  local set=$1 src=$out/$1.de
  [ "$set" = extra ] && src=$out/extra.src
  stage "$set.beam5" nmt translate -m "$fwd" -i "$src" -o "$out/$set.beam5.hyp" --beam-size 5 -q
  stage "$set.nbest" nmt translate -m "$fwd" -i "$src" -o "$out/$set.nbest" \
    --beam-size "$nbest" --n-best "$nbest" -q
  stage "$set.features" nmt rerank -n "$out/$set.nbest" -s "$src" --reverse "$rev" --lm "$lm" \
    --features "$out/$set.features.jsonl" -o "$out/$set.forward.hyp" -q
}

decode val
stage val.tune nmt tune --cached "$out/val.features.jsonl" -r "$out/val.en" \
  -o "$out/rerank_weights.json" | tee "$out/rerank_tune.txt"
stage val.fusion_grid nmt tune --grid "lm_weight=$grid" -m "$fwd" --lm "$lm" -i "$out/val.de" \
  -r "$out/val.en" | tee "$out/fusion_grid.txt"
weight=$(sed -n 's/^best: decode.lm_weight=\([^ ]*\) .*/\1/p' "$out/fusion_grid.txt")
echo "$weight" > "$out/fusion_weight.txt"

# finish SET: fusion with the tuned weight and reranking with the tuned weights
finish() {
  local set=$1 src=$out/$1.de
  [ "$set" = extra ] && src=$out/extra.src
  stage "$set.fusion" nmt translate -m "$fwd" --lm "$lm" --lm-weight "$weight" -i "$src" \
    -o "$out/$set.fusion.hyp" --beam-size 5 -q
  stage "$set.rerank" nmt rerank --cached "$out/$set.features.jsonl" \
    --weights "$out/rerank_weights.json" -o "$out/$set.rerank.hyp" -q
}

for set in test2016 ${extra_src:+extra}; do
  decode "$set"
  finish "$set"
done
total=$(( $(date +%s) - start ))

python - "$out" "$total" "$fwd" "$rev" "$lm" "$weight" ${extra_src:+extra} <<'PY'
import json, subprocess, sys
from pathlib import Path
out, total, fwd, rev, lm, weight = Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:7]
sets = {"test2016": out / "test2016.en"}
if len(sys.argv) > 7:
    sets["extra"] = out / "extra.ref"
times = dict(line.split("\t") for line in (out / "times.tsv").read_text().splitlines())
times = {k: float(v) for k, v in times.items()}
def evaluate(hyp, ref):
    found = json.loads(subprocess.run(["nmt", "eval", "-i", str(hyp), "-r", str(ref), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    return {m["metric"]: round(m["score"], 2) for m in found}
scores = {}
for name, ref in sets.items():
    lines = len(ref.read_text(encoding="utf-8").splitlines())
    scores[name] = {"lines": lines}
    for kind in ("beam5", "fusion", "rerank"):
        scores[name][kind] = evaluate(out / f"{name}.{kind}.hyp", ref)
    for kind in ("beam5", "fusion"):
        scores[name][f"{kind}_sentences_per_s"] = round(lines / times[f"{name}.{kind}"], 1)
    scores[name]["fusion_speed_ratio"] = round(times[f"{name}.beam5"] / times[f"{name}.fusion"], 3)
    scores[name]["rerank_features_s"] = times[f"{name}.features"]
lm_score = json.loads((out / "lm_test2016.json").read_text())["corpus"]
summary = {
    "models": {"forward": fwd, "reverse": rev, "lm": lm},
    "lm_test2016": {k: lm_score[k] for k in ("perplexity_word", "perplexity_subword", "words")},
    "fusion_weight": float(weight),
    "rerank_weights": json.loads((out / "rerank_weights.json").read_text()),
    "scores": scores, "seconds": times, "total_seconds": total,
}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({k: summary[k] for k in ("fusion_weight", "rerank_weights", "scores",
                                          "total_seconds")}, indent=1))
PY
