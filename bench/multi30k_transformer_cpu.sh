#!/usr/bin/env bash
# The whole Multi30k de-en Transformer CPU pipeline from the raw gzip files, timed stage by stage:
# tokenizer -> preprocess -> train -> translate (beam 5 and greedy) -> eval on test_2016_flickr,
# with the averaged checkpoint (train.average_last) when it validates at least as well as best.pt.
# Usage: bash bench/multi30k_transformer_cpu.sh [RECIPE] [extra --set overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-recipes/multi30k-de-en-transformer-cpu.yaml}
shift || true
workdir=$(python -c "import sys; from nmt_cli.recipes import load_recipe; print(load_recipe(sys.argv[1], sys.argv[2:]).workdir)" "$recipe" "$@")
test_src=$(python -c "import sys; from nmt_cli.recipes import load_recipe; r=load_recipe(sys.argv[1], sys.argv[2:]); print(r.data.test.src)" "$recipe" "$@")
test_ref=$(python -c "import sys; from nmt_cli.recipes import load_recipe; r=load_recipe(sys.argv[1], sys.argv[2:]); print(r.data.test.tgt)" "$recipe" "$@")
sets=()
for s in "$@"; do sets+=(--set "$s"); done
start=$(date +%s)
stage() { local t0; t0=$(date +%s); "$@"; echo "== $1 $2: $(( $(date +%s) - t0 )) s" >&2; }
stage nmt tokenizer "$recipe" "${sets[@]}"
stage nmt preprocess "$recipe" "${sets[@]}"
stage nmt train "$recipe" "${sets[@]}" --overwrite
zcat -f "$test_src" > "$workdir/test.src"
zcat -f "$test_ref" > "$workdir/test.ref"
# The averaged checkpoint when its dev BLEU is at least the best single checkpoint's (in a run cut
# short by max_time the average can reach back to early, weaker checkpoints), else best.pt.
model=$(python - "$workdir" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if line]
best = max((r["dev_bleu"] for r in records if r.get("event") == "valid"), default=float("-inf"))
averaged = [r["dev_bleu"] for r in records if r.get("event") == "averaged"]
use_avg = (work / "checkpoints/averaged.pt").is_file() and averaged and averaged[-1] >= best
print(work / "checkpoints" / ("averaged.pt" if use_avg else "best.pt"))
PY
)
echo "== translating with $model" >&2
stage nmt translate -m "$model" -i "$workdir/test.src" -o "$workdir/test.hyp" --beam-size 5
stage nmt eval -i "$workdir/test.hyp" -r "$workdir/test.ref" --metrics bleu,chrf
echo "== total wall clock: $(( $(date +%s) - start )) s" >&2
# Not part of the budget: greedy speed and score on the same model, and the dev curve.
stage nmt translate -m "$model" -i "$workdir/test.src" -o "$workdir/test.greedy.hyp" --beam-size 1
stage nmt eval -i "$workdir/test.greedy.hyp" -r "$workdir/test.ref" --metrics bleu,chrf
grep -E '"event": "(valid|averaged)"' "$workdir/metrics.jsonl" >&2 || true
