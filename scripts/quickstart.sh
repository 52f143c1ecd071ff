#!/usr/bin/env bash
# From a fresh clone to a trained model: install into .venv, then run the five stages on the
# bundled sample bitext and print the test BLEU and chrF.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh

recipe=recipes/sample.yaml
run=runs/sample
nmt tokenizer "$recipe"
nmt preprocess "$recipe"
nmt train "$recipe" --overwrite
nmt translate -m "$run/checkpoints/best.pt" -i data/sample/test.src -o "$run/test.hyp"
echo "== test set (data/sample/test.tgt, 500 sentences), beam 5:"
nmt eval -i "$run/test.hyp" -r data/sample/test.tgt
