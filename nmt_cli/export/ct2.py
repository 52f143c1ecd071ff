"""``nmt export``: a Transformer checkpoint as a CTranslate2 model directory, built through the
engine's own specification API (``ctranslate2.specs.TransformerSpec``).

nmt's Transformer holds its weights as ``TransformerSpec`` does (fused self-attention
query-key-value, fused cross-attention key-value, biases on every linear layer but the output
one), so each tensor maps one to one. The position table is written out (sinusoidal or learned),
so the engine uses exactly nmt's, and padded with copies of its last row up to
``position_rows``: nmt gives every position past ``max_positions`` the last one, while the engine
refuses a position past its table. The vocabulary is the SentencePiece pieces in id order; nmt's
special pieces (<pad> 0, <unk> 1, <s> 2, </s> 3, ``nmt_cli.ids``) are the engine's unk, bos
(decoder start) and eos tokens, and the engine appends </s> to each source as nmt does.

The directory is written under a temporary sibling name and renamed at the end, so an error
never leaves a half-written model behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nmt_cli.checkpoint import library_versions, load_checkpoint, model_from_checkpoint
from nmt_cli.config import Recipe, to_dict
from nmt_cli.decoding.ct2 import FORMAT, METADATA, SRC_SPM, TGT_SPM, require_ctranslate2
from nmt_cli.errors import CheckpointError, NmtError
from nmt_cli.files import fsync_dir, replace_durably
from nmt_cli.ids import BOS_ID, EOS_ID, UNK_ID
from nmt_cli.recipes import recipe_from_dict

# Position rows an export holds at least: more than nmt serve lets a request's output reach
# (serve.max_output_len, 512) and than the default decode limits allow (a 250-subword source,
# 386 output subwords), for 1024 x d_model floats, one table that the engine's encoder and
# decoder share (``ModelSpec.optimize`` aliases equal tensors).
MIN_POSITION_ROWS = 1024


def _linear(spec, layer) -> None:
    spec.weight = layer.weight.detach().float().numpy()
    if layer.bias is not None:
        spec.bias = layer.bias.detach().float().numpy()


def _norm(spec, norm) -> None:
    spec.gamma = norm.weight.detach().float().numpy()
    spec.beta = norm.bias.detach().float().numpy()


def position_rows(recipe: Recipe) -> int:
    """Rows of the exported position table: ``max_positions``, ``MIN_POSITION_ROWS``, and what
    the recipe's decode limits let a sentence reach (its longest source with EOS, the output
    limit for that source plus EOS), whichever is most. The engine cuts longer sources and
    outputs to this (``decoding.ct2``)."""
    cfg = recipe.decode
    source = cfg.max_src_len + 1
    output = max(0, int(cfg.max_len_a * source) + cfg.max_len_b) + 1
    return max(recipe.model.transformer.max_positions, MIN_POSITION_ROWS, source, output)


def _positions(model, rows: int):
    """nmt's position table as ``rows`` rows: rows past ``max_positions`` repeat its last row,
    which is the position nmt gives every later token (``Transformer._embed``)."""
    table = model.positions.weight if model.tcfg.positions == "learned" else model.sinusoids
    table = table.detach().float().numpy()
    return np.concatenate([table, np.repeat(table[-1:], rows - len(table), axis=0)])


def transformer_spec(model, rows: int):
    """The ``TransformerSpec`` of an nmt Transformer, every tensor and option set, with
    ``rows`` position rows."""
    from ctranslate2.specs import common_spec, transformer_spec as ts

    cfg = model.tcfg
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}
    if cfg.activation not in activation:
        raise NmtError(f"model.transformer.activation {cfg.activation!r} has no CTranslate2 "
                       "equivalent; it cannot be exported")
    pre = cfg.norm == "pre"
    common = {"num_layers": None, "num_heads": cfg.heads, "pre_norm": pre,
              "activation": activation[cfg.activation]}
    encoder = ts.TransformerEncoderSpec(**{**common, "num_layers": cfg.encoder_layers})
    decoder = ts.TransformerDecoderSpec(**{**common, "num_layers": cfg.decoder_layers})
    scale = bool(cfg.scale_embeddings)
    positions = _positions(model, rows)
    for side, spec, table in (("encoder", encoder, model.src_embed),
                              ("decoder", decoder, model.tgt_embed)):
        spec.scale_embeddings = scale
        spec.position_encodings.encodings = positions
        emb = spec.embeddings[0] if side == "encoder" else spec.embeddings
        emb.weight = table.weight.detach().float().numpy()
    if pre:
        _norm(encoder.layer_norm, model.encoder_norm)
        _norm(decoder.layer_norm, model.decoder_norm)
    for spec, layer in zip(encoder.layer, model.encoder_layers):
        _linear(spec.self_attention.linear[0], layer.self_attn.qkv)
        _linear(spec.self_attention.linear[1], layer.self_attn.out)
        _norm(spec.self_attention.layer_norm, layer.attn_block.norm)
        _ffn(spec.ffn, layer)
    for spec, layer in zip(decoder.layer, model.decoder_layers):
        _linear(spec.self_attention.linear[0], layer.self_attn.qkv)
        _linear(spec.self_attention.linear[1], layer.self_attn.out)
        _norm(spec.self_attention.layer_norm, layer.self_block.norm)
        _linear(spec.attention.linear[0], layer.cross_attn.query)
        _linear(spec.attention.linear[1], layer.cross_attn.key_value)
        _linear(spec.attention.linear[2], layer.cross_attn.out)
        _norm(spec.attention.layer_norm, layer.cross_block.norm)
        _ffn(spec.ffn, layer)
    _linear(decoder.projection, model.output_layer)
    return ts.TransformerSpec(encoder, decoder)


def _ffn(spec, layer) -> None:
    _linear(spec.linear_0, layer.ff.inner)
    _linear(spec.linear_1, layer.ff.outer)
    _norm(spec.layer_norm, layer.ff_block.norm)


def _require_transformer(payload: dict, checkpoint: Path) -> None:
    """Refuse a checkpoint of another architecture by its recipe alone; a recipe that does not
    read is left to ``model_from_checkpoint``, which names what is wrong with it."""
    try:
        arch = recipe_from_dict(payload["recipe"]).model.arch
    except (KeyError, TypeError, NmtError):
        return
    if arch != "transformer":
        raise CheckpointError(f"{checkpoint}: an {arch.upper()} checkpoint; CTranslate2 runs "
                              "Transformer models only")


def _vocabulary(sp) -> list[str]:
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def export_ctranslate2(checkpoint: Path, output: Path, quantization: str = "float32",
                       overwrite: bool = False) -> Path:
    """Write ``checkpoint`` as a CTranslate2 model directory ``output``; returns ``output``."""
    ct2 = require_ctranslate2()
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise NmtError(f"{output}: exists and is not a directory; choose another -o")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise NmtError(f"{output}: directory is not empty; choose another -o, or add "
                       "--overwrite to replace it")
    # Mapped, not read: the recipe says which architecture this is before any weight is read
    # from disk or a model built, so an RNN checkpoint is refused at the cost of its recipe.
    payload = load_checkpoint(checkpoint, mmap=True)
    _require_transformer(payload, checkpoint)
    model, tok, recipe = model_from_checkpoint(payload, checkpoint, "cpu")
    # the engine cannot fuse a language model: a decode.lm of the recipe stays behind
    recipe = dataclasses.replace(recipe, decode=dataclasses.replace(recipe.decode, lm=None))
    rows = position_rows(recipe)
    spec = transformer_spec(model, rows)
    spec.config.unk_token = tok.tgt.id_to_piece(UNK_ID)
    spec.config.bos_token = tok.tgt.id_to_piece(BOS_ID)
    spec.config.eos_token = tok.tgt.id_to_piece(EOS_ID)
    spec.config.decoder_start_token = tok.tgt.id_to_piece(BOS_ID)
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = model.encoder_layers[0].attn_block.norm.eps
    spec.register_source_vocabulary(_vocabulary(tok.src))
    spec.register_target_vocabulary(_vocabulary(tok.tgt))
    try:
        spec.validate()
        spec.optimize(quantization=quantization)
    except (ValueError, TypeError) as exc:
        raise NmtError(f"CTranslate2 rejects this model: {exc}") from None

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        spec.save(str(tmp))
        (tmp / SRC_SPM).write_bytes(tok.src_bytes)
        (tmp / TGT_SPM).write_bytes(tok.tgt_bytes)
        versions = {**library_versions(), "ctranslate2": ct2.__version__}
        metadata = {
            "format": FORMAT, "engine": "ctranslate2", "quantization": quantization,
            "source": str(checkpoint), "language_pair": [recipe.data.src_lang,
                                                         recipe.data.tgt_lang],
            "tokenizer": {"files": {"src": SRC_SPM, "tgt": TGT_SPM}, "sha256": tok.sha256()},
            "normalize": to_dict(recipe.preprocess.normalize), "decode": to_dict(recipe.decode),
            "parameters": sum(p.numel() for p in model.parameters()), "positions": rows,
            "versions": versions, "recipe": to_dict(recipe),
        }
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        for path in tmp.iterdir():  # every file on disk before the folder gets its real name
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
            replace_durably(output, old / "model")
            replace_durably(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            replace_durably(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
