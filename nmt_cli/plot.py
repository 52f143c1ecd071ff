"""``nmt plot``: training curves from a run's ``metrics.jsonl`` as one PNG (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path

from nmt_cli.errors import NmtError
from nmt_cli.training.metrics import read_metrics


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NmtError("nmt plot needs matplotlib; install it with: pip install 'nmt[plot]'") \
            from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: Path, output: Path | None = None) -> Path:
    """Draw the curves of ``run_dir`` (see ``draw_curves``) into a PNG; returns its path."""
    run_dir = Path(run_dir)
    fig = draw_curves(run_dir)
    target = Path(output) if output else run_dir / "curves.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(target, dpi=100)
    finally:
        _pyplot().close(fig)
    return target


def draw_curves(run_dir: Path):
    """A matplotlib Figure of three panels sharing the step axis: train/dev loss, dev BLEU,
    learning rate; dotted lines mark where the run was resumed. The caller closes it."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("event") == "train"]
    valid = [r for r in records if r.get("event") == "valid"]
    if not train and not valid:
        raise NmtError(f"{run_dir / 'metrics.jsonl'}: no training or validation records to plot yet")
    plt = _pyplot()
    fig, (ax_loss, ax_bleu, ax_lr) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    fig.suptitle(f"{run_dir.resolve().name}: training curves")

    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss",
                 color="tab:blue")
    dev_loss = [r for r in valid if "dev_loss" in r]
    if dev_loss:
        ax_loss.plot([r["step"] for r in dev_loss], [r["dev_loss"] for r in dev_loss], "o-",
                     label="dev loss (NLL)", color="tab:orange")
    ax_loss.set_ylabel("loss per token")
    ax_loss.legend(loc="upper right")
    ax_loss.grid(alpha=0.3)

    bleu = [r for r in valid if "dev_bleu" in r]
    if bleu:
        ax_bleu.plot([r["step"] for r in bleu], [r["dev_bleu"] for r in bleu], "o-",
                     color="tab:green")
    else:
        ax_bleu.text(0.5, 0.5, "no dev BLEU recorded", ha="center", va="center",
                     transform=ax_bleu.transAxes)
    ax_bleu.set_ylabel("dev BLEU")
    ax_bleu.grid(alpha=0.3)

    lr_points = sorted({r["step"]: r["lr"] for r in train + valid if "lr" in r}.items())
    ax_lr.plot([s for s, _ in lr_points], [v for _, v in lr_points], color="tab:red")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step (optimizer updates)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_lr.grid(alpha=0.3)

    for resume in (r for r in records if r.get("event") == "resume"):
        for ax in (ax_loss, ax_bleu, ax_lr):
            ax.axvline(resume["step"], color="grey", linestyle=":", linewidth=1)
        ax_loss.annotate("resumed", (resume["step"], 1.0), xycoords=("data", "axes fraction"),
                         xytext=(3, -12), textcoords="offset points", color="grey", fontsize=8)

    fig.tight_layout()
    return fig
