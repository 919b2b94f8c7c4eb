"""panda.progress: a bar only on global rank 0 and only when stderr is a terminal."""

import io

from panda.progress import is_global_zero, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_on_a_terminal_of_rank_zero(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress(range(3), desc="export", file=terminal)) == [0, 1, 2]
    assert "export" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_quiet_off_a_terminal_and_off_rank_zero(monkeypatch):
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)
    assert list(progress(range(3), desc="export", file=quiet)) == [0, 1, 2]
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setenv("RANK", "1")
    assert not is_global_zero()
    list(progress(range(3), desc="export", file=terminal))
    assert quiet.getvalue() == terminal.getvalue() == ""
