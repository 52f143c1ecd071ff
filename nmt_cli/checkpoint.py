"""Self-describing checkpoints: weights, recipe and tokenizer in one file, written atomically.

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``weights_only=True``, so
loading one can never run code. Translating needs nothing but the checkpoint file.
"""

from __future__ import annotations

import io
import platform
from pathlib import Path
from typing import Any

import torch

from nmt_cli import __version__
from nmt_cli.config import Recipe, to_dict
from nmt_cli.errors import CheckpointError, NmtError
from nmt_cli.files import atomic_write_bytes
from nmt_cli.model import Seq2Seq, build_model
from nmt_cli.recipes import recipe_from_dict
from nmt_cli.tokenizer import Tokenizers

FORMAT = "nmt-checkpoint-1"


def library_versions() -> dict[str, str]:
    import sacrebleu
    import sentencepiece

    return {"nmt": __version__, "torch": str(torch.__version__), "sentencepiece": sentencepiece.__version__,
            "sacrebleu": str(sacrebleu.__version__), "python": platform.python_version()}


def make_checkpoint(model: Seq2Seq, recipe: Recipe, tok: Tokenizers, **extra: Any) -> dict:
    return {
        "format": FORMAT,
        "recipe": to_dict(recipe),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": {"src": tok.src_bytes, "tgt": tok.tgt_bytes},
        "versions": library_versions(),
        **extra,
    }


def save_checkpoint(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with 'nmt train RECIPE' "
                              "(checkpoints are written to WORKDIR/checkpoints/)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a checkpoint at all
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.__class__.__name__}); it is "
                              "truncated or not an nmt checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nmt checkpoint (expected format {FORMAT!r})")
    return payload


def model_from_checkpoint(payload: dict, path: Path | str = "checkpoint",
                          device: torch.device | str = "cpu") -> tuple[Seq2Seq, Tokenizers, Recipe]:
    """Rebuild the model, its tokenizers and recipe; a vocabulary that does not fit is an error."""
    try:
        recipe = recipe_from_dict(payload["recipe"])
        tok = Tokenizers.from_bytes(payload["tokenizer"]["src"], payload["tokenizer"]["tgt"])
    except (KeyError, NmtError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's recipe or tokenizer is unreadable ({exc})") \
            from None
    model = build_model(recipe.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint)
    state = payload["model"]
    expected = {"src_embed.weight": tok.src_vocab_size, "output_layer.weight": tok.tgt_vocab_size}
    for key, size in expected.items():
        if key in state and state[key].size(0) != size:
            raise CheckpointError(f"{path}: vocabulary/model mismatch: {key} has {state[key].size(0)} "
                                  f"rows but the tokenizer has {size} pieces; use the tokenizer the "
                                  "model was trained with")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model in its recipe: {first}") \
            from None
    return model.to(device).eval(), tok, recipe
