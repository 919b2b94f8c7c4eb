"""panda.io: a published path appears whole or not at all, with the usual permissions, and leftovers go away."""

import os
import stat

import pytest

from panda.io import atomic_directory, atomic_path, remove_partials, sibling


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_published_folder_and_files_follow_the_umask(tmp_path, umask_022):
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "model.safetensors").write_bytes(b"x")
    assert _mode(tmp_path / "out") == 0o755  # tempfile.mkdtemp would have made it 0700
    assert _mode(tmp_path / "out" / "model.safetensors") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_leaves_nothing_and_keeps_the_previous_version(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "old.txt").read_text() == "old"


def test_overwrite_replaces_only_when_complete_and_refuses_without_it(tmp_path):
    target = tmp_path / "result.jsonl"
    target.write_text("old\n")
    with pytest.raises(FileExistsError, match="already exists"), atomic_path(target):
        pass
    with atomic_path(target, overwrite=True) as partial:
        partial.write_text("new\n")
        assert target.read_text() == "old\n"  # still the old one while the new one is written
    assert target.read_text() == "new\n"


def test_leftovers_of_a_killed_publish_are_removed_by_the_next_one(tmp_path):
    leftover = sibling(tmp_path / "out")
    leftover.mkdir()
    (leftover / "shard").write_bytes(b"partial")
    assert remove_partials(tmp_path / "out") == [leftover]
    sibling(tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_crash_between_the_two_renames_keeps_the_complete_old_version(tmp_path):
    """`publish` moved the old folder aside and died before the new one was renamed in: the old one comes back."""
    from panda.io import retired

    old = retired(tmp_path / "out")
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"complete")
    sibling(tmp_path / "out").mkdir()  # the new version, half written
    remove_partials(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"complete"
