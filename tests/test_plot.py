"""``nmt plot`` draws loss, dev BLEU and learning rate from a finished run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from _train_fixtures import env, new_run, prepared, train_here  # noqa: F401

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib (the 'plot' extra) is not installed")
def test_plot_writes_a_png_of_a_finished_run(prepared):  # noqa: F811
    recipe, workdir = new_run(prepared, "plotted", max_steps=12, valid_every=4,
                              schedule="inverse_sqrt", warmup_steps=4)
    train_here(recipe)
    proc = subprocess.run([sys.executable, "-m", "nmt_cli", "plot", str(workdir)], env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    png = workdir / "curves.png"
    assert proc.stdout.strip() == f"wrote {png}"
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000  # three panels with lines, not blank
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (800, 900)


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

