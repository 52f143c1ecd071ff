"""Attention out: Pharaoh alignments (``i-j`` links 0-based source subword i to target subword j,
the one it attends to most; EOS left out) and heatmaps (matplotlib, an optional extra)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from nmt_cli.errors import NmtError


def hard_alignment(attention: Tensor, n_src: int, n_tgt: int) -> list[tuple[int, int]]:
    """attention (T, S) of one hypothesis -> (source i, target j) for each target subword j."""
    if n_src == 0 or n_tgt == 0:
        return []
    best = attention[:n_tgt, :n_src].argmax(dim=-1).tolist()
    return [(i, j) for j, i in enumerate(best)]


def pharaoh(pairs: list[tuple[int, int]]) -> str:
    return " ".join(f"{i}-{j}" for i, j in pairs)


def require_matplotlib() -> None:
    """Fail early, in one line, when the optional plotting extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NmtError("--plot-attention needs matplotlib, which is not installed; run "
                       "'pip install matplotlib' (or pip install 'nmt[plot]')") from None


def plot_attention(attention: Tensor, src_pieces: list[str], tgt_pieces: list[str],
                   path: Path) -> None:
    """Write one PNG heatmap: target subwords (rows, EOS last) against source subwords (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = attention[: len(tgt_pieces), : len(src_pieces)].float().numpy()
    width = max(4.0, 0.35 * len(src_pieces) + 1.5)
    height = max(3.0, 0.35 * len(tgt_pieces) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(weights, cmap="Greys", vmin=0.0, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_xticks(range(len(src_pieces)))
    ax.set_xticklabels(src_pieces, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tgt_pieces)))
    ax.set_yticklabels(tgt_pieces, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
