"""``nmt plot`` draws loss, dev BLEU and learning rate from a finished run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from _train_fixtures import env, new_run, prepared, train_here  # noqa: F401

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib (the 'plot' extra) is not installed")


def _lines(ax) -> tuple[list[tuple[str, list, list]], list[float]]:
    """An axes' data lines as (label, x, y), and the x of its dotted resume marks."""
    data, resumes = [], []
    for line in ax.get_lines():
        x, y = [float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()]
        if line.get_linestyle() == ":":
            resumes.append(x[0])
        else:
            data.append((line.get_label(), x, y))
    return data, resumes


def _check_figure_matches_log(fig, records) -> None:
    """Three panels whose curves hold exactly the log's numbers."""
    train = [r for r in records if r["event"] == "train"]
    valid = [r for r in records if r["event"] == "valid"]
    resumes = [float(r["step"]) for r in records if r["event"] == "resume"]
    loss_ax, bleu_ax, lr_ax = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss per token", "dev BLEU", "learning rate"]
    assert lr_ax.get_xlabel() == "step (optimizer updates)"

    loss = {label: (x, y) for label, x, y in _lines(loss_ax)[0]}
    assert set(loss) == {"train loss", "dev loss (NLL)"}
    assert loss["train loss"] == ([r["step"] for r in train], [r["loss"] for r in train])
    assert loss["dev loss (NLL)"] == ([r["step"] for r in valid], [r["dev_loss"] for r in valid])
    [(_, x, y)] = _lines(bleu_ax)[0]
    assert (x, y) == ([r["step"] for r in valid], [r["dev_bleu"] for r in valid])
    lr = {r["step"]: r["lr"] for r in train + valid}
    [(_, x, y)] = _lines(lr_ax)[0]
    assert (x, y) == (sorted(lr), [lr[s] for s in sorted(lr)])
    for ax in fig.axes:
        assert _lines(ax)[1] == resumes


@needs_matplotlib
def test_figure_draws_the_metrics_log_with_resumes(tmp_path):
    import matplotlib.pyplot as plt

    from nmt_cli.plot import draw_curves

    records = [{"event": "start", "pairs": 10}]
    records += [{"event": "train", "step": s, "loss": 6.0 - s / 2, "lr": 1e-3 * s} for s in (1, 2, 3)]
    records += [{"event": "valid", "step": 3, "dev_loss": 5.5, "dev_bleu": 1.5, "lr": 3e-3},
                {"event": "resume", "step": 3, "epoch": 0, "batch": 3}]
    records += [{"event": "train", "step": s, "loss": 6.0 - s / 2, "lr": 1e-3 * s} for s in (4, 5, 6)]
    records += [{"event": "valid", "step": 6, "dev_loss": 4.25, "dev_bleu": 7.0, "lr": 6e-3},
                {"event": "end", "steps": 6}]
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = draw_curves(run)
    try:
        assert fig._suptitle.get_text() == "myrun: training curves"
        _check_figure_matches_log(fig, records)
        assert [float(x) for x in fig.axes[0].get_lines()[0].get_xdata()] == [1, 2, 3, 4, 5, 6]
    finally:
        plt.close(fig)


@needs_matplotlib
def test_plot_writes_a_png_of_a_finished_run(prepared):  # noqa: F811
    import matplotlib.pyplot as plt

    from nmt_cli.plot import draw_curves
    from nmt_cli.training.metrics import read_metrics

    recipe, workdir = new_run(prepared, "plotted", max_steps=12, valid_every=4,
                              schedule="inverse_sqrt", warmup_steps=4)
    train_here(recipe)
    proc = subprocess.run([sys.executable, "-m", "nmt_cli", "plot", str(workdir)], env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    png = workdir / "curves.png"
    assert proc.stdout.strip() == f"wrote {png}"
    assert png.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (800, 900)
    fig = draw_curves(workdir)  # what the PNG shows: the run's own numbers
    try:
        records = read_metrics(workdir)
        assert len([r for r in records if r["event"] == "train"]) == 12
        assert len([r for r in records if r["event"] == "valid"]) == 3
        _check_figure_matches_log(fig, records)
    finally:
        plt.close(fig)


def test_plot_without_matplotlib_is_one_clear_error(prepared, monkeypatch, tmp_path):  # noqa: F811
    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 5.0, '
                                            '"lr": 0.001}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    from nmt_cli.errors import NmtError
    from nmt_cli.plot import plot_run

    with pytest.raises(NmtError, match=r"pip install 'nmt\[plot\]'"):
        plot_run(tmp_path)


def test_plot_of_a_folder_without_metrics_says_so(tmp_path):
    from nmt_cli.errors import NmtError
    from nmt_cli.plot import plot_run

    with pytest.raises(NmtError, match="no metrics log"):
        plot_run(tmp_path)

