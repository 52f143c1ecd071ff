"""Language models (``model.arch: lm``): their recipe keys, the cached step against full
recomputation, training on data/sample to a low perplexity, and their checkpoints' errors."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from _lm_fixtures import lm_recipe_dict, trained_lm
from conftest import SAMPLE, assert_one_line_error, run_cli
from nmt_cli.errors import ConfigError
from nmt_cli.model import RnnLM, TransformerLM, build_model
from nmt_cli.recipes import load_recipe, recipe_from_dict

VOCAB = 40


def _lm(family: str, **changes) -> torch.nn.Module:
    spec = {"rnn": {"rnn": {"emb_size": 16, "hidden_size": 16, "layers": 2, "dropout": 0.0}},
            "transformer": {"transformer": {"d_model": 16, "ff_size": 32, "heads": 2,
                                            "decoder_layers": 2, "dropout": 0.0, **changes}}}
    model = {"arch": "lm", "tie_embeddings": True, "lm": {"family": family, **spec[family]}}
    torch.manual_seed(0)
    return build_model(recipe_from_dict({"model": model}).model, VOCAB, VOCAB, True).eval()


@pytest.mark.parametrize("family,changes", [("rnn", {}), ("transformer", {}),
                                            ("transformer", {"norm": "post",
                                                             "positions": "learned"})])
def test_the_cached_step_equals_full_recomputation_through_a_reorder(family, changes):
    """Step by step with the cached state, reordered halfway as a beam would be, gives the same
    log-probabilities as teacher forcing over the whole (reordered) sentences."""
    model = _lm(family, **changes)
    tokens = torch.randint(4, VOCAB, (4, 9))
    tokens[:, 0] = 2  # BOS
    perm = torch.tensor([3, 3, 0, 1])  # a beam may copy a row and drop another
    with torch.no_grad():
        full = torch.log_softmax(model(None, None, tokens[perm]).float(), dim=-1)
        state, steps = model.start(4), []
        for t in range(tokens.size(1)):
            log_probs, state = model.step((tokens if t < 4 else tokens[perm])[:, t], state)
            steps.append(log_probs if t >= 4 else log_probs[perm])
            if t == 3:
                state = state.select(perm)
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5)
    assert type(model) is {"rnn": RnnLM, "transformer": TransformerLM}[family]


def test_padding_after_a_sentence_leaves_its_scores_alone():
    for family in ("rnn", "transformer"):
        model = _lm(family)
        short = torch.tensor([[2, 5, 6, 7]])
        padded = torch.tensor([[2, 5, 6, 7, 0, 0], [2, 9, 9, 9, 9, 9]])
        with torch.no_grad():
            alone, together = model(None, None, short), model(None, None, padded)
        assert torch.allclose(alone[0], together[0, :4], atol=1e-5)


@pytest.mark.parametrize("model,key,needle", [
    ({"arch": "lm", "lm": {"family": "rnn", "rnn": {"cel": "lstm"}}}, "model.lm.rnn.cel",
     "did you mean 'model.lm.rnn.cell'"),
    ({"arch": "lm", "lm": {"family": "rnn", "rnn": {"cell": "gur"}}}, "model.lm.rnn.cell",
     "did you mean 'gru'"),
    ({"arch": "lm", "lm": {"family": "transformer", "rnn": {"layers": 2}}}, "model.lm.rnn",
     "belongs to model.lm.family 'rnn'"),
    ({"arch": "lm", "lm": {"family": "rnn", "transformer": {"heads": 2}}}, "model.lm.transformer",
     "belongs to model.lm.family 'transformer'"),
    ({"arch": "lm", "lm": {"family": "transformer", "transformer": {"encoder_layers": 2}}},
     "model.lm.transformer.encoder_layers", "no encoder"),
    ({"arch": "lm", "encoder": {"hidden_size": 8}}, "model.encoder", "belongs to model.arch 'rnn'"),
    ({"arch": "rnn", "lm": {"family": "rnn"}}, "model.lm", "belongs to model.arch 'lm'"),
    ({"arch": "lm", "share_embeddings": True}, "model.share_embeddings", "one embedding table"),
    ({"arch": "lm", "lm": {"family": "gpt"}}, "model.lm.family", "not allowed"),
])
def test_a_wrong_lm_key_is_one_error_naming_it(model, key, needle):
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"model": model})
    assert str(err.value).startswith(f"{key}: ") and needle in str(err.value)


def _recipe_file(tmp_path, data: str, arch: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(f"workdir: w\ndata:\n  train: {data}\nmodel: {{arch: {arch}}}\n")
    return path


@pytest.mark.parametrize("data,arch,key,needle", [
    ("{text: a.txt}", "rnn", "data.train.text", "does not train on monolingual text"),
    ("{src: a.txt, tgt: b.txt}", "lm", "data.train.src", "give one text file per corpus"),
    ("{text: a.txt, tgt: b.txt}", "lm", "data.train.text", "either text"),
])
def test_text_corpora_go_with_language_models_only(tmp_path, data, arch, key, needle):
    with pytest.raises(ConfigError) as err:
        load_recipe(_recipe_file(tmp_path, data, arch))
    assert f"{key}: " in str(err.value) and needle in str(err.value)


def _unigram_perplexity(train: list[list[int]], dev: list[list[int]], vocab: int) -> float:
    """A context-free baseline: add-one unigram counts of the training pieces (EOS included)."""
    counts = Counter(i for ids in train for i in ids + [3])
    total = sum(counts.values()) + vocab
    logprob = sum(math.log((counts[i] + 1) / total) for ids in dev for i in ids + [3])
    return math.exp(-logprob / sum(len(ids) + 1 for ids in dev))


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_the_sample_lm_reaches_a_low_perplexity_and_best_pt_follows_it(family):
    """data/sample's target language is made of rules: a trained LM is far below what counting
    pieces alone gives, and best.pt is the checkpoint of the lowest dev perplexity."""
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint

    best = trained_lm(family)
    model, tok, recipe = model_from_checkpoint(load_checkpoint(best), best)
    train = tok.encode_tgt((SAMPLE / "train.tgt").read_text().splitlines()[:3000])
    dev = tok.encode_tgt((SAMPLE / "dev.tgt").read_text().splitlines()[:100])
    baseline = _unigram_perplexity(train, dev, tok.tgt_vocab_size)
    logs = [json.loads(line) for line in (best.parent.parent / "metrics.jsonl").read_text()
            .splitlines()]
    valid = [r for r in logs if r.get("event") == "valid"]
    lowest = min(valid, key=lambda r: r["dev_ppl"])
    assert "dev_bleu" not in lowest
    assert lowest["dev_ppl"] < baseline / 3, (lowest["dev_ppl"], baseline)
    assert load_checkpoint(best)["step"] == lowest["step"]
    assert type(model) is {"rnn": RnnLM, "transformer": TransformerLM}[family]


def test_an_lm_trains_from_the_cli_and_resumes_exactly(tmp_path):
    """nmt tokenizer -> preprocess -> train on a text corpus; a run stopped and resumed ends with
    the same weights as one that ran straight through."""
    import yaml

    raws = {}
    for name in ("straight", "resumed"):
        raw = lm_recipe_dict(tmp_path / name, "rnn", None, max_steps=40)
        raw["train"].update(valid_every=20, save_every=20)
        raws[name] = tmp_path / f"{name}.yaml"
        raws[name].write_text(yaml.safe_dump(raw))
        for command in ("tokenizer", "preprocess"):
            assert run_cli(command, raws[name]).returncode == 0
    manifest = json.loads((tmp_path / "straight" / "run" / "data" / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert "copy" not in train["filters"]  # one side is never a copy of the other
    assert train["written"] == train["kept"] > 0.9 * train["pairs_in"] == 0.9 * 3000
    assert run_cli("train", raws["straight"]).returncode == 0
    first = run_cli("train", raws["resumed"], "--set", "train.max_steps=20")
    assert first.returncode == 0, first.stderr
    second = run_cli("train", raws["resumed"], "--resume")
    assert second.returncode == 0 and "resuming from" in second.stdout + second.stderr
    weights = [torch.load(tmp_path / n / "run" / "checkpoints" / "last.pt",
                          weights_only=True)["model"] for n in ("straight", "resumed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    plotted = run_cli("plot", tmp_path / "straight" / "run")  # dev perplexity, no BLEU
    assert plotted.returncode == 0 and (tmp_path / "straight" / "run" / "curves.png").is_file()


def test_an_lm_given_to_translate_is_one_error(tmp_path):
    proc = run_cli("translate", "-m", trained_lm("rnn"), "--device", "cpu", input="a b c\n")
    assert_one_line_error(proc, "a language model (model.arch: lm)", "--lm")
