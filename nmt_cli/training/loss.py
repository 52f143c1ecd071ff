"""The training loss: label-smoothed cross-entropy with its gradient written out by hand."""

from __future__ import annotations

import torch

from nmt_cli.ids import PAD_ID

# On the CPU the rows of the logits go a block at a time, about this many logits to a block.
CPU_BLOCK_LOGITS = 1 << 20


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy summed over the non-padding rows of (N, V) logits; forward also
    computes the gradient, a cache-sized block of rows at a time on the CPU, so that no (N, V) fp32
    tensor is made. Returns (loss, nll); the NLL sum is for reporting and has no gradient."""

    @staticmethod
    def forward(ctx, logits, target, eps: float):  # type: ignore[override]
        rows, vocab = logits.shape
        keep = target != PAD_ID
        want_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if want_grad else None
        block = rows if logits.device.type != "cpu" else max(1, CPU_BLOCK_LOGITS // vocab)
        nll_parts, smooth_parts = [], []
        for lo in range(0, max(rows, 1), block):
            hi = min(lo + block, rows)
            log_probs = torch.log_softmax(logits[lo:hi].float(), dim=-1)  # (hi - lo, V) fp32
            tgt, kept = target[lo:hi].unsqueeze(1), keep[lo:hi]
            nll_parts.append((-log_probs.gather(1, tgt).squeeze(1)).masked_fill(~kept, 0.0))
            if eps > 0:
                smooth_parts.append((-log_probs.mean(dim=-1)).masked_fill(~kept, 0.0))
            if want_grad:
                g = log_probs.exp_()  # the softmax
                if eps > 0:
                    g.sub_(eps / vocab)
                g.scatter_add_(1, tgt, g.new_full((hi - lo, 1), -(1.0 - eps)))
                grad[lo:hi] = g.mul_(kept.unsqueeze(1))
        nll = torch.cat(nll_parts)
        loss = nll.sum()
        if eps > 0:
            loss = (1.0 - eps) * loss + eps * torch.cat(smooth_parts).sum()
        if want_grad:
            ctx.save_for_backward(grad)
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_loss), None, None  # backward runs once: scaled in place


def sequence_loss(logits: torch.Tensor, target: torch.Tensor,
                  label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy and plain NLL over non-padding positions: the value and
    gradient of ``F.cross_entropy(..., label_smoothing=eps, ignore_index=PAD)`` summed."""
    flat = logits.reshape(-1, logits.size(-1))
    return _SmoothedCrossEntropy.apply(flat, target.reshape(-1), float(label_smoothing))
