"""Language models at decoding time: opening an ``arch: lm`` checkpoint (and refusing any other),
checking that it shares a translation model's target vocabulary, and each line's log-probability
under it (teacher forcing, EOS included)."""

from __future__ import annotations

from pathlib import Path

import torch

from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
from nmt_cli.config import NormalizeConfig, Recipe
from nmt_cli.data import pad_sequences
from nmt_cli.decoding.hypotheses import clean_lines
from nmt_cli.errors import CheckpointError, NmtError
from nmt_cli.ids import BOS_ID, EOS_ID
from nmt_cli.text.tokenizer import Tokenizers, model_paths


def checkpoint_arch(path: Path) -> str:
    """``model.arch`` of a checkpoint's recipe, read without building the model."""
    from nmt_cli.recipes import recipe_from_dict

    payload = load_checkpoint(path, mmap=True)
    try:
        return recipe_from_dict(payload["recipe"]).model.arch
    except (KeyError, TypeError, NmtError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's recipe is unreadable ({exc})") from None


def open_lm(path: Path, device: torch.device | str = "cpu"):
    """A language model checkpoint as (model in eval mode, tokenizers, recipe)."""
    payload = load_checkpoint(path, mmap=True)
    model, tok, recipe = model_from_checkpoint(payload, path, device)
    if recipe.model.arch != "lm":
        raise CheckpointError(f"{path}: a translation model (model.arch: {recipe.model.arch}), "
                              "not a language model; give a checkpoint trained with model.arch: "
                              "lm")
    return model, tok, recipe


def tokenizer_file(recipe: Recipe) -> Path:
    """The target tokenizer file a recipe trained with (or names, with tokenizer.model)."""
    return model_paths(recipe)["tgt"]


def check_shared_vocabulary(lm_path: Path, lm_tok: Tokenizers, lm_recipe: Recipe,
                            tok: Tokenizers, recipe: Recipe) -> None:
    """A language model for fusion predicts the translation model's target pieces: the same
    SentencePiece model, byte for byte, or one error naming both files."""
    if lm_tok.tgt_bytes != tok.tgt_bytes:
        raise CheckpointError(
            f"{lm_path}: the language model's tokenizer ({tokenizer_file(lm_recipe)}) is not the "
            f"translation model's target tokenizer ({tokenizer_file(recipe)}); train the LM with "
            f"tokenizer.model: {tokenizer_file(recipe)}")


@torch.no_grad()
def lm_line_scores(model, tok: Tokenizers, lines: list[str], *, normalize: NormalizeConfig,
                   batch_size: int = 64, device: torch.device | str = "cpu"
                   ) -> list[tuple[float, int]]:
    """Per line, (summed natural-log probability of its pieces and EOS, pieces + 1), lines
    cleaned as the LM's training text was. An empty line scores EOS alone."""
    device = torch.device(device)
    ids = tok.encode_tgt(clean_lines(lines, normalize))
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    found: list[tuple[float, int]] = [(0.0, 0)] * len(ids)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        tgt_in, _ = pad_sequences([ids[i] for i in batch], prefix=BOS_ID)
        tgt_out, lengths = pad_sequences([ids[i] for i in batch], suffix=EOS_ID)
        tgt_in, tgt_out = tgt_in.to(device), tgt_out.to(device)
        log_probs = torch.log_softmax(model(None, None, tgt_in).float(), dim=-1)
        gained = log_probs.gather(2, tgt_out.unsqueeze(2)).squeeze(2)  # (B, T)
        real = torch.arange(tgt_out.size(1), device=device) < lengths.to(device).unsqueeze(1)
        totals = gained.masked_fill(~real, 0.0).sum(dim=1).tolist()
        for i, total, n in zip(batch, totals, lengths.tolist()):
            found[i] = (total, n)
    return found
