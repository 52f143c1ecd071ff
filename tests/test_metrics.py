"""The metrics log survives kills and resumes."""

from __future__ import annotations


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path):
    from nmt_cli.training.metrics import MetricsLog, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 5.0}\n'
                                            '{"event": "train", "step": 2, "loss": 4.0}\n'
                                            '{"event": "train", "st')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    MetricsLog(tmp_path).start(resume_step=1)  # resuming from step 1 cuts the log back to it
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
