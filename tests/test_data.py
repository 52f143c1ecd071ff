"""Token batching and collation: coverage, budget, determinism, padding."""

from __future__ import annotations

import numpy as np
import pytest

from nmt_cli.data import ParallelData, collate, pad_sequences, token_batches
from nmt_cli.text.preprocess import data_dir, load_manifest
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID


def random_lengths(n: int, seed: int = 0, high: int = 60):
    rng = np.random.default_rng(seed)
    return rng.integers(1, high, n), rng.integers(1, high, n)


def check_budget(batches, src_len, tgt_len, budget):
    for b in batches:
        width = int(np.maximum(src_len[b], tgt_len[b]).max()) + 1  # + BOS/EOS
        if len(b) > 1:
            assert len(b) * width <= budget, (len(b), width, budget)
        else:
            assert len(b) == 1


@pytest.mark.parametrize("budget", [1, 50, 500, 3000, 10**6])
@pytest.mark.parametrize("use_rng", [False, True])
def test_every_index_exactly_once_within_budget(budget, use_rng):
    src_len, tgt_len = random_lengths(1000)
    rng = np.random.default_rng(3) if use_rng else None
    batches = token_batches(src_len, tgt_len, budget, rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(len(b) > 0 for b in batches)
    check_budget(batches, src_len, tgt_len, budget)


def test_long_pairs_get_a_batch_of_their_own():
    src_len = np.array([3, 4, 200, 5, 150, 2])
    tgt_len = np.array([3, 300, 4, 5, 2, 2])
    batches = token_batches(src_len, tgt_len, 100)
    singles = {int(b[0]) for b in batches if len(b) == 1}
    assert {1, 2, 4} <= singles  # each longer than the budget on one side
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    check_budget(batches, src_len, tgt_len, 100)


def test_batches_use_the_budget():
    """Greedy cutting: a batch is only closed when the next pair would not fit."""
    src_len, tgt_len = random_lengths(2000, seed=1, high=40)
    budget = 2000
    batches = token_batches(src_len, tgt_len, budget)
    widths = [int(np.maximum(src_len[b], tgt_len[b]).max()) + 1 for b in batches]
    # All but the last batch are at least half full (lengths are sorted, so no batch is tiny).
    fill = [len(b) * w / budget for b, w in zip(batches, widths)]
    assert min(fill[:-1]) > 0.5


def test_deterministic_for_a_seed_and_shuffled_across_seeds():
    src_len, tgt_len = random_lengths(800, seed=2)
    a = token_batches(src_len, tgt_len, 700, np.random.default_rng(11))
    b = token_batches(src_len, tgt_len, 700, np.random.default_rng(11))
    c = token_batches(src_len, tgt_len, 700, np.random.default_rng(12))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    unshuffled = token_batches(src_len, tgt_len, 700)
    assert [x.tolist() for x in unshuffled] == [x.tolist() for x in token_batches(src_len, tgt_len,
                                                                                   700)]


def test_empty_input():
    assert token_batches(np.array([], dtype=int), np.array([], dtype=int), 100) == []


def test_padding_fraction_on_sample_is_small(experiment):
    recipe = experiment.recipe
    manifest = load_manifest(recipe)
    train = ParallelData(data_dir(recipe), "train", manifest["dtype"])
    for budget in (1500, 4000):
        batches = train.batches(budget, np.random.default_rng(0))
        assert train.padding_fraction(batches) < 0.10
        # and the fraction agrees with the tensors training actually sees
        real = padded = 0
        for idx in batches[:40]:
            batch = train.collate(idx)
            padded += batch.src.numel() + batch.tgt_out.numel()
            real += int((batch.src != PAD_ID).sum() + (batch.tgt_out != PAD_ID).sum())
        assert 1 - real / padded < 0.10


def test_collate_adds_bos_eos_and_pads():
    src = [np.array([5, 6, 7]), np.array([8])]
    tgt = [np.array([9]), np.array([10, 11, 12, 13])]
    batch = collate(src, tgt)
    assert batch.src.tolist() == [[5, 6, 7, EOS_ID], [8, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [4, 2]
    assert batch.tgt_in.tolist() == [[BOS_ID, 9, PAD_ID, PAD_ID, PAD_ID],
                                     [BOS_ID, 10, 11, 12, 13]]
    assert batch.tgt_out.tolist() == [[9, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
                                      [10, 11, 12, 13, EOS_ID]]
    assert batch.n_tgt_tokens == 2 + 5


def test_pad_sequences_handles_empty_sequences():
    ids, lengths = pad_sequences([[], [4, 5]], suffix=EOS_ID)
    assert ids.tolist() == [[EOS_ID, PAD_ID, PAD_ID], [4, 5, EOS_ID]]
    assert lengths.tolist() == [1, 3]


def test_parallel_data_batches_collate_to_the_stored_ids(experiment):
    recipe = experiment.recipe
    manifest = load_manifest(recipe)
    dev = ParallelData(data_dir(recipe), "dev", manifest["dtype"])
    idx = dev.batches(500)[0]
    batch = dev.collate(idx)
    for row, i in enumerate(idx):
        n = len(dev.src[i])
        assert batch.src[row, :n].tolist() == dev.src[i].tolist()
        assert batch.src[row, n] == EOS_ID
        assert batch.src_lengths[row] == n + 1
