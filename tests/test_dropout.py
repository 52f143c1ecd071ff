"""The CPU dropout of nmt_cli.model.dropout: its rate (in every 16-bit lane of a draw), its
scaling, its gradient, and reproducibility under a seed."""

from __future__ import annotations

import pytest
import torch

from nmt_cli.model.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_each_lane_drops_at_the_rate_asked(p):
    torch.manual_seed(0)
    kept = keep_mask((1000, 4000), p, torch.device("cpu")).view(-1, 4)  # 4 lanes per draw
    drop_rate = 1.0 - kept.float().mean(dim=0)
    # 1M draws per lane: the standard error is below 5e-4
    assert torch.all((drop_rate - p).abs() < 3e-3), drop_rate


def test_kept_elements_are_scaled_and_the_gradient_follows_the_mask():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 7, requires_grad=True)  # 105 elements: not a multiple of the lanes
    out = dropout(x, 0.25, True)
    kept = out != 0
    assert 0 < int(kept.sum()) < x.numel()
    torch.testing.assert_close(out[kept], x.detach()[kept] / 0.75)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def test_eval_mode_and_zero_rate_pass_the_input_through():
    x = torch.randn(4, 8)
    assert dropout(x, 0.3, False) is x and dropout(x, 0.0, True) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert torch.all(dropout(x, 1.0, True) == 0)
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_masks_are_reproducible_under_a_seed_and_differ_between_calls():
    x = torch.ones(64, 64, dtype=torch.bfloat16)
    torch.manual_seed(7)
    first, second = dropout(x, 0.1, True), dropout(x, 0.1, True)
    torch.manual_seed(7)
    assert torch.equal(dropout(x, 0.1, True), first)
    assert not torch.equal(first, second)
    assert first.dtype == torch.bfloat16
