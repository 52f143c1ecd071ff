"""The training loss: the value and gradient of label-smoothed cross-entropy summed over the
non-padding positions, whatever the smoothing, the dtype or the blocks the CPU splits rows into."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt_cli.ids import PAD_ID
from nmt_cli.training import loss as loss_module
from nmt_cli.training.loss import sequence_loss

VOCAB = 37


def batch(rows: int = 4, length: int = 6, vocab: int = VOCAB, seed: int = 0):
    """(rows, length, vocab) logits and targets with padding at the ends of some sentences."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, length, vocab, generator=g) * 3
    target = torch.randint(4, vocab, (rows, length), generator=g)
    target[0, 4:] = PAD_ID
    target[2, 1:] = PAD_ID
    return logits, target


def reference(logits: torch.Tensor, target: torch.Tensor, eps: float, scale: float = 1.0):
    """torch's own loss (and, through autograd, its gradient) for the same sums."""
    flat = logits.detach().reshape(-1, logits.size(-1)).float().requires_grad_(True)
    loss = F.cross_entropy(flat, target.reshape(-1), ignore_index=PAD_ID, label_smoothing=eps,
                           reduction="sum")
    loss.mul(scale).backward()
    return loss.detach(), flat.grad.reshape(logits.shape)


def ours(logits: torch.Tensor, target: torch.Tensor, eps: float, scale: float = 1.0):
    x = logits.detach().clone().requires_grad_(True)
    loss, nll = sequence_loss(x, target, eps)
    loss.mul(scale).backward()
    return loss.detach(), nll, x.grad


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_value_and_gradient_equal_torch_cross_entropy(eps):
    logits, target = batch()
    want_loss, want_grad = reference(logits, target, eps, scale=0.7)
    loss, _, grad = ours(logits, target, eps, scale=0.7)
    torch.testing.assert_close(loss, want_loss, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-5)
    assert grad.abs().sum() > 1.0  # a real gradient, not one that vanished on both sides


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_nll_is_the_plain_negative_log_likelihood(eps):
    logits, target = batch(seed=1)
    _, nll, _ = ours(logits, target, eps)
    flat, tgt = logits.reshape(-1, VOCAB), target.reshape(-1)
    kept = tgt != PAD_ID
    by_hand = -torch.log_softmax(flat[kept], dim=-1).gather(1, tgt[kept].unsqueeze(1)).sum()
    torch.testing.assert_close(nll, by_hand, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(nll, F.cross_entropy(flat, tgt, ignore_index=PAD_ID,
                                                    reduction="sum"), atol=1e-4, rtol=1e-6)
    assert not nll.requires_grad  # for reporting only


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_padding_positions_neither_count_nor_get_a_gradient(eps):
    logits, target = batch(seed=2)
    loss, nll, grad = ours(logits, target, eps)
    padded = target == PAD_ID
    assert padded.any() and (~padded).any()
    assert torch.all(grad[padded] == 0)
    assert torch.all(grad[~padded].abs().sum(-1) > 0)
    changed = logits.clone()
    changed[padded] += 100.0 * torch.randn_like(changed[padded])  # scores there must not matter
    loss2, nll2, _ = ours(changed, target, eps)
    assert torch.equal(loss2, loss) and torch.equal(nll2, nll)


def test_all_padding_and_no_rows_give_zero():
    logits = torch.randn(3, VOCAB)
    loss, nll, grad = ours(logits, torch.full((3,), PAD_ID), 0.1)
    assert loss.item() == 0.0 and nll.item() == 0.0 and torch.all(grad == 0)
    loss, nll = sequence_loss(torch.zeros(0, VOCAB), torch.zeros(0, dtype=torch.long), 0.1)
    assert loss.item() == 0.0 and nll.item() == 0.0


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_blocks_of_rows_on_the_cpu_equal_one_block(eps, monkeypatch):
    """With a vocabulary this large one CPU block holds 8 rows, so 19 rows are three blocks,
    the last one short; then one row a block; the results must be those of a single block."""
    vocab = loss_module.CPU_BLOCK_LOGITS // 8
    logits, target = batch(rows=19, length=1, vocab=vocab, seed=3)
    target[[3, 8, 17]] = PAD_ID
    blocked = ours(logits, target, eps, scale=0.5)
    monkeypatch.setattr(loss_module, "CPU_BLOCK_LOGITS", vocab)  # one row a block
    single_rows = ours(logits, target, eps, scale=0.5)
    monkeypatch.setattr(loss_module, "CPU_BLOCK_LOGITS", 19 * vocab)  # every row in one block
    one_block = ours(logits, target, eps, scale=0.5)
    for got in (blocked, single_rows):
        for a, b in zip(got, one_block):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    want_loss, want_grad = reference(logits, target, eps, scale=0.5)
    torch.testing.assert_close(one_block[0], want_loss, atol=1e-3, rtol=1e-6)
    # against torch: sums over 131,072 logits round differently from one CPU to another
    torch.testing.assert_close(one_block[2], want_grad, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_bf16_logits_get_a_bf16_gradient_from_fp32_log_probabilities(eps):
    logits, target = batch(seed=4)
    half = logits.bfloat16()
    loss, _, grad = ours(half, target, eps)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    want_loss, want_grad = reference(half.float(), target, eps)  # the same bf16 values, in fp32
    torch.testing.assert_close(loss, want_loss, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(grad.float(), want_grad, atol=1e-2, rtol=1e-2)


def test_without_a_gradient_the_value_is_the_same():
    """Validation calls the loss under ``no_grad``: the same sums, no gradient kept."""
    logits, target = batch(seed=5)
    loss, nll, _ = ours(logits, target, 0.1)
    with torch.no_grad():
        loss2, nll2 = sequence_loss(logits, target, 0.1)
    assert torch.equal(loss2, loss) and torch.equal(nll2, nll)
