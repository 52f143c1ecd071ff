"""Validation during training: the dev set's loss and perplexity, and the BLEU of the model's
translations of it, decoded as ``nmt translate`` would with the run's decode settings (a
language model has no BLEU: its dev perplexity chooses ``best.pt``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from nmt_cli.config import Recipe, with_overrides
from nmt_cli.data import ParallelData
from nmt_cli.decoding.inference import translate_lines
from nmt_cli.errors import DataError
from nmt_cli.runtime import autocast
from nmt_cli.scoring import score_lines
from nmt_cli.text.bitext import read_split
from nmt_cli.text.preprocess import data_dir
from nmt_cli.text.tokenizer import Tokenizers
from nmt_cli.training.loss import sequence_loss


def dev_metric(dev: dict[str, Any]) -> float:
    """The number early stopping and ``best.pt`` follow, higher is better: BLEU, else -loss."""
    return dev.get("dev_bleu", -dev.get("dev_loss", 0.0))


def describe(dev: dict[str, Any], improved: bool) -> str:
    """One console line for a validation."""
    parts = [f"step {dev['step']}"]
    if "dev_loss" in dev:
        parts.append(f"dev loss {dev['dev_loss']:.3f} ppl {dev['dev_ppl']:.2f}")
    if "dev_bleu" in dev:
        parts.append(f"BLEU {dev['dev_bleu']:.2f}")
    return "[bold]valid[/] " + ", ".join(parts) + (" [green](best)[/]" if improved else "")


class DevSet:
    """The recipe's ``data.dev``: preprocessed pairs for the loss, raw lines for BLEU (at most
    ``train.valid_max_sentences``). Without ``data.dev``, ``enabled`` is false."""

    def __init__(self, recipe: Recipe, manifest: dict[str, Any], device: torch.device,
                 precision: str):
        self.recipe, self.device, self.precision = recipe, device, precision
        self.enabled = recipe.data.dev is not None
        self.data = (ParallelData(data_dir(recipe), "dev", manifest["dtype"])
                     if self.enabled and "dev" in manifest["splits"] else None)
        self.src, self.ref = self._lines()
        translates = recipe.model.arch != "lm"  # a language model is chosen by its perplexity
        has_lines = self.src if translates else self.data is not None and len(self.data)
        if self.enabled and not has_lines:
            raise DataError("the dev set is empty; give it lines, or leave data.dev out to train "
                            "without validation", recipe.data.dev.sources()[0].files()[0])

    def _lines(self) -> tuple[list[str], list[str]]:
        dev = self.recipe.data.dev
        if dev is None or self.recipe.model.arch == "lm":
            return [], []
        pairs = list(read_split(dev))  # files or TSV, one corpus or several
        pairs = pairs[: self.recipe.train.valid_max_sentences or None]
        return [s for s, _ in pairs], [t for _, t in pairs]

    @torch.no_grad()
    def score(self, model, tok: Tokenizers, step: int) -> dict[str, Any]:
        """``step``, the dev loss and perplexity per target token, and the BLEU (eval mode)."""
        result: dict[str, Any] = {"step": step}
        if self.data is not None and len(self.data):
            nll = tokens = 0.0
            for idx in self.data.batches(self.recipe.train.batch_tokens):
                batch = self.data.collate(idx).to(self.device)
                with autocast(self.device, self.precision):
                    logits = model(batch.src, batch.src_lengths, batch.tgt_in)
                nll += float(sequence_loss(logits, batch.tgt_out, 0.0)[1])
                tokens += batch.n_tgt_tokens
            result["dev_loss"] = nll / tokens
            result["dev_ppl"] = math.exp(min(result["dev_loss"], 50.0))
        if self.src:
            result["dev_bleu"] = self._bleu(model, tok)
        return result

    def _bleu(self, model, tok: Tokenizers) -> float:
        recipe = self.recipe
        dec = with_overrides(recipe.decode, {"beam_size": recipe.train.valid_beam_size,
                                             "n_best": 1}, "decode")
        hyps = [t.text for t in translate_lines(model, tok, self.src, dec,
                                                normalize=recipe.preprocess.normalize,
                                                device=self.device)]
        return score_lines(hyps, [self.ref], ["bleu"], recipe.eval.tokenize)[0].score
