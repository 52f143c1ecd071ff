#!/usr/bin/env bash
# CTranslate2 against nmt's own decoding on Multi30k test_2016_flickr: export a Transformer
# checkpoint as int8 and float32, then one run of bench/decode.py compares whole processes, beam 5
# and greedy, with BLEU and the share of lines identical to nmt's output.
#
#   bench/ct2_multi30k.sh CHECKPOINT [OUT_DIR] [THREADS]
set -euo pipefail
ckpt=${1:?usage: bench/ct2_multi30k.sh CHECKPOINT [OUT_DIR] [THREADS]}
out=${2:-runs/ct2-bench}
threads=${3:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${MULTI30K:-$root/../shared/data/multi30k}
py=${PYTHON:-python}
mkdir -p "$out"
zcat "$data/test_2016_flickr.de.gz" > "$out/test.de"
zcat "$data/test_2016_flickr.en.gz" > "$out/test.en"
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
for q in int8 float32; do
  "$py" -m nmt_cli export "$ckpt" -o "$out/ct2-$q" --quantization "$q" --overwrite
done
uptime
"$py" "$root/bench/decode.py" -m "$ckpt" --ct2 "$out/ct2-int8" "$out/ct2-float32" \
  -i "$out/test.de" -r "$out/test.en" --beam-sizes 5 1 --threads "$threads" --keep "$out/hyp"
uptime
