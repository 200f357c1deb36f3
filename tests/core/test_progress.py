"""The dependency-free progress bar."""

from __future__ import annotations

import io

from lepton_core.progress import Progress


def test_progress_draws_and_finishes_with_newline():
    s = io.StringIO()
    bar = Progress(4, "train", stream=s, tty=True)
    bar.update(1, "val_acc 0.5")
    for _ in range(3):
        bar.update(1)
    out = s.getvalue()
    assert out.startswith("\rtrain [")
    assert "4/4" in out and "#" * 24 in out and out.endswith("\n")
    assert "val_acc 0.5" in out  # the postfix sticks until replaced
    bar.close()  # already complete: no extra newline
    assert s.getvalue() == out


def test_progress_clamps_and_close_ends_line():
    s = io.StringIO()
    bar = Progress(10, "x", stream=s, tty=True)
    bar.update(3)
    bar.update(100)
    assert bar.n == 10
    s2 = io.StringIO()
    partial = Progress(10, "y", stream=s2, tty=True)
    partial.update(2)
    partial.close()
    assert s2.getvalue().endswith("\n") and "2/10" in s2.getvalue()


def test_progress_disabled_writes_nothing():
    s = io.StringIO()
    bar = Progress(3, "quiet", enabled=False, stream=s)
    bar.update(3)
    bar.close()
    assert s.getvalue() == ""
    assert Progress(0, stream=s).total == 1


def test_progress_in_a_log_writes_whole_lines_per_tenth():
    s = io.StringIO()
    bar = Progress(100, "train", stream=s, tty=False)
    for _ in range(100):
        bar.update(1, "val_acc 0.9")
    bar.close()
    lines = s.getvalue().splitlines()
    assert "\r" not in s.getvalue()
    # the first update, then one line per tenth
    assert len(lines) == 11 and "1/100" in lines[0]
    assert lines[-1].startswith("train [") and "100/100" in lines[-1]


def test_progress_in_a_log_reports_where_an_early_stop_ended():
    s = io.StringIO()
    bar = Progress(30, "train", stream=s, tty=False)
    for _ in range(18):
        bar.update(1)
    bar.close()
    assert "18/30" in s.getvalue().splitlines()[-1]
