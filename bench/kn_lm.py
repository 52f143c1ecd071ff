"""An interpolated modified Kneser-Ney n-gram language model (Chen and Goodman, 1998), counted
here in plain Python: the count baseline that nmt's neural language models are compared with.

    python bench/kn_lm.py --train train.en.gz --test test_2016_flickr.en.gz [--order 5]

- Each line is one sentence: ``<s> w1 ... wn </s>``; ``</s>`` is predicted, ``<s>`` is only
  context. Words are the line split at whitespace with punctuation split off (``--tokenize
  punct``, default) or whitespace alone (``--tokenize space``); the text keeps its case.
- The highest order uses raw counts, each lower order continuation counts (the number of distinct
  words seen before the n-gram), except n-grams that start with ``<s>``, which nothing can
  precede and which keep their raw counts. Each order has three discounts (counts 1, 2, 3+),
  from its count-of-counts: ``Y = n1 / (n1 + 2 n2)``, ``D_k = k - (k + 1) Y n_{k+1} / n_k``
  (Y alone for all three where a count-of-counts is 0 or an estimate leaves (0, k], which
  happens on toy corpora only).
- Every order is interpolated with the one below; the unigrams with the uniform distribution
  over the vocabulary: every training word, ``</s>`` and ``<unk>``. A test word never seen in
  training is ``<unk>`` and gets the uniform share, so it is scored, not skipped (the count of
  such words is reported).
- Perplexity per word is ``exp(-ln P / (W + S))``: W whitespace-separated words of the raw lines
  (not the split tokens) and one ``</s>`` for each of the S lines, as for a neural LM's lines.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
PUNCT = re.compile(r"\w+|[^\w\s]")


def tokenize(line: str, how: str = "punct") -> list[str]:
    return PUNCT.findall(line) if how == "punct" else line.split()


def discounts(count_of_counts: Counter) -> tuple[float, float, float]:
    """Chen and Goodman's D1, D2, D3+ from the numbers of n-grams seen once, twice, ... 4 times.
    Where one of those numbers is 0 or an estimate falls outside (0, k] (a tiny corpus), Ney's
    single discount Y for all three, or 0.5 where even Y is undefined."""
    n1, n2, n3, n4 = (count_of_counts[k] for k in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 else 0.5
    if not (n1 and n2 and n3 and n4):
        return y, y, y
    found = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    return found if all(0 < d <= k for k, d in enumerate(found, 1)) else (y, y, y)


class KneserNey:
    """``fit`` on tokenized sentences, then ``prob(word, context)``; ``fixed`` gives every order
    the same three discounts instead of the estimated ones (for hand-checked examples)."""

    def __init__(self, order: int = 5, fixed: tuple[float, float, float] | None = None):
        self.order, self.fixed = order, fixed
        self.counts: list[dict[tuple, int]] = []  # per order (index n - 1): adjusted counts
        self.context: list[dict[tuple, tuple[int, int, int, int]]] = []  # total, n1, n2, n3+
        self.discount: list[tuple[float, float, float]] = []
        self.vocab: set[str] = set()

    def fit(self, sentences: Iterable[Sequence[str]]) -> "KneserNey":
        raw: list[Counter] = [Counter() for _ in range(self.order)]
        for words in sentences:
            tokens = [BOS, *words, EOS]
            self.vocab.update(words)
            for n in range(1, self.order + 1):
                for i in range(max(1, n - 1), len(tokens)):  # never <s> as the word
                    raw[n - 1][tuple(tokens[i - n + 1:i + 1])] += 1
        self.vocab |= {EOS, UNK}
        self.counts = [dict(raw[-1])]
        for n in range(self.order - 1, 0, -1):  # continuation counts from the order above
            left: Counter = Counter(gram[1:] for gram in raw[n])
            self.counts.insert(0, {g: (c if g[0] == BOS else left[g]) for g, c in raw[n - 1].items()
                                   if g[0] == BOS or left[g]})
        for n, counts in enumerate(self.counts, 1):
            self.discount.append(self.fixed or discounts(Counter(
                c for c in counts.values() if c <= 4)))
            stats: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            for gram, c in counts.items():
                s = stats[gram[:-1]]
                s[0] += c
                s[min(c, 3)] += 1
            self.context.append({h: tuple(s) for h, s in stats.items()})
        return self

    def prob(self, word: str, context: Sequence[str]) -> float:
        """p(word | the last order - 1 words of context), interpolated down to the uniform."""
        word = word if word in self.vocab else UNK
        context = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        p = 1.0 / len(self.vocab)
        for n in range(1, len(context) + 2):  # unigram first, then longer histories
            h = context[len(context) - n + 1:]
            stats = self.context[n - 1].get(h)
            if stats is None:
                continue  # an unseen history: the lower order's estimate stands
            total, n1, n2, n3 = stats
            d1, d2, d3 = self.discount[n - 1]
            c = self.counts[n - 1].get(h + (word,), 0)
            d = 0.0 if c == 0 else d1 if c == 1 else d2 if c == 2 else d3
            gamma = (d1 * n1 + d2 * n2 + d3 * n3) / total
            p = max(c - d, 0.0) / total + gamma * p
        return p

    def sentence_logprob(self, words: Sequence[str]) -> tuple[float, int]:
        """ln P(words </s> | <s>), and how many words were unknown."""
        tokens = [BOS, *words, EOS]
        total = sum(math.log(self.prob(tokens[i], tokens[max(0, i - self.order + 1):i]))
                    for i in range(1, len(tokens)))
        return total, sum(1 for w in words if w not in self.vocab)


def read(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


def evaluate(model: KneserNey, lines: list[str], how: str) -> dict[str, float]:
    logprob = oov = tokens = 0
    for line in lines:
        words = tokenize(line, how)
        lp, unknown = model.sentence_logprob(words)
        logprob, oov, tokens = logprob + lp, oov + unknown, tokens + len(words) + 1
    words = sum(len(line.split()) for line in lines) + len(lines)
    return {"sentences": len(lines), "words": words, "tokens": tokens, "oov": oov,
            "logprob": logprob, "ppl_word": math.exp(-logprob / words),
            "ppl_token": math.exp(-logprob / tokens)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, nargs="+", required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--order", type=int, default=5)
    parser.add_argument("--tokenize", choices=("punct", "space"), default="punct")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    start = time.time()
    train = [tokenize(line, args.tokenize) for path in args.train for line in read(path)]
    model = KneserNey(args.order).fit(train)
    found = {"order": args.order, "tokenize": args.tokenize, "vocab": len(model.vocab),
             "train_sentences": len(train), **evaluate(model, read(args.test), args.tokenize),
             "discounts": [[round(d, 4) for d in ds] for ds in model.discount],
             "seconds": round(time.time() - start, 1)}
    if args.json:
        print(json.dumps(found, indent=2))
        return
    print(f"{args.order}-gram interpolated modified Kneser-Ney, tokenize {args.tokenize}, "
          f"vocabulary {found['vocab']} (training words, </s>, <unk>), trained on "
          f"{len(train)} sentences")
    print(f"{args.test}: {found['sentences']} sentences, {found['words']} words (with </s>), "
          f"{found['oov']} unknown: perplexity {found['ppl_word']:.2f} per word, "
          f"{found['ppl_token']:.2f} per token ({found['tokens']} tokens), "
          f"{found['seconds']} s", file=sys.stdout)


if __name__ == "__main__":
    main()
