"""bench/kn_lm.py, the count baseline: probabilities worked out by hand on a toy corpus, every
distribution sums to one (unknown words included), the discounts follow Chen and Goodman, and
the script reports a per-word perplexity."""

from __future__ import annotations

import importlib.util
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kn_lm", ROOT / "bench" / "kn_lm.py")
kn_lm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kn_lm)

TOY = [s.split() for s in ("a b", "a c", "b")]  # <s> a b </s>, <s> a c </s>, <s> b </s>


def test_bigram_probabilities_by_hand():
    """Discounts 0.5. Unigram continuation counts a 1, b 2, c 1, </s> 2 (total 6), vocabulary
    a b c </s> <unk> (5), gamma 1/3: p(a) = 0.5/6 + 1/15 = 0.15. After a: b 1, c 1, gamma 0.5.
    After <s> (raw counts, nothing precedes <s>): a 2, b 1, gamma 1/3. After b: </s> 2."""
    lm = kn_lm.KneserNey(2, fixed=(0.5, 0.5, 0.5)).fit(TOY)
    assert lm.prob("a", []) == pytest.approx(0.15)
    assert lm.prob("b", []) == pytest.approx(1.5 / 6 + 1 / 15)
    assert lm.prob("never seen", []) == pytest.approx(1 / 15)  # <unk>: the uniform share
    assert lm.prob("b", ["a"]) == pytest.approx(0.25 + 0.5 * (1.5 / 6 + 1 / 15))
    assert lm.prob("a", ["a"]) == pytest.approx(0.5 * 0.15)
    assert lm.prob("a", ["<s>"]) == pytest.approx(1.5 / 3 + 0.15 / 3)
    assert lm.prob("</s>", ["b"]) == pytest.approx(0.75 + 0.25 * (1.5 / 6 + 1 / 15))
    logprob, oov = lm.sentence_logprob(["a", "b"])
    assert logprob == pytest.approx(math.log(0.55 * (0.25 + 0.5 * 0.31666667) * 0.82916667))
    assert oov == 0 and lm.sentence_logprob(["a", "zebra"])[1] == 1


def test_trigram_uses_continuation_counts_below_and_raw_counts_after_bos():
    """In the trigram model the bigrams' counts are continuation counts, except those after <s>;
    on this corpus both give the bigram model's values. After <s> a: b 1, c 1, gamma 0.5."""
    lm = kn_lm.KneserNey(3, fixed=(0.5, 0.5, 0.5)).fit(TOY)
    assert lm.prob("a", ["<s>"]) == pytest.approx(0.55)
    assert lm.prob("b", ["<s>", "a"]) == pytest.approx(0.25 + 0.5 * 0.40833333)
    assert lm.counts[1][("b", "</s>")] == 2  # seen after a and after <s>
    assert lm.counts[1][("<s>", "a")] == 2  # raw: nothing precedes <s>


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Random sentences over a few words, a few words more likely than the rest."""
    rng = random.Random(seed)
    words = "the a cat dog mat sat ran on and away big small red".split() + [
        f"w{i}" for i in range(60)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    return [" ".join(rng.choices(words, weights=weights, k=rng.randint(2, 8))) + "."
            for _ in range(n)]


@pytest.mark.parametrize("fixed", [None, (0.5, 0.5, 0.5)])
def test_every_distribution_sums_to_one(fixed):
    lm = kn_lm.KneserNey(4, fixed).fit(kn_lm.tokenize(line) for line in corpus())
    assert fixed or len(set(lm.discount)) == 4  # each order its own estimates
    for context in ([], ["the"], ["<s>", "the"], ["on", "the"], ["sat", "on", "the"],
                    ["zebra", "the"], ["never", "seen", "words"], ["<s>"]):
        total = sum(lm.prob(w, context) for w in lm.vocab)
        assert total == pytest.approx(1.0, abs=1e-9), context


def test_modified_discounts_from_count_of_counts():
    d1, d2, d3 = kn_lm.discounts(Counter({1: 10, 2: 4, 3: 2, 4: 1}))
    y = 10 / 18
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 0.4, 2 - 3 * y * 0.5, 3 - 4 * y * 0.5))
    assert kn_lm.discounts(Counter({1: 3, 2: 1})) == pytest.approx((0.6, 0.6, 0.6))  # Y alone
    assert kn_lm.discounts(Counter({1: 1, 2: 1, 3: 5, 4: 1})) == pytest.approx((1 / 3,) * 3)


def test_the_script_reports_per_word_perplexity(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(corpus()) + "\n", encoding="utf-8")
    test = tmp_path / "test.txt"
    test.write_text("the cat ran.\na zebra sat.\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "kn_lm.py"), "--train", train,
                           "--test", test, "--order", "3", "--json"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    import json

    found = json.loads(proc.stdout)
    assert found["words"] == 3 + 3 + 2 and found["oov"] == 1 and found["tokens"] == 5 + 5
    assert found["ppl_word"] == pytest.approx(math.exp(-found["logprob"] / 8))
    assert 1 < found["ppl_token"] < found["ppl_word"]
