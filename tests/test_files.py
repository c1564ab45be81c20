"""omnilm.files: a target is complete or absent (or the old one), whatever kills or fails a write."""
import errno
import os
import subprocess
import sys
import textwrap

import pytest

from omnilm.files import ASIDE, DiskFull, atomic_file, atomic_folder, clean_folder, recover


def _write(target, text):
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text(text)
        (tmp / "b.txt").write_text(text)


def _contents(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def _killed_at_rename(target, text, nth_rename, after=False):
    """Replace `target` in a child process that dies (no cleanup, like SIGKILL) at its nth os.replace,
    before it or just `after` it."""
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from omnilm.files import atomic_folder
        real, calls = os.replace, [0]
        def dying_replace(src, dst):
            calls[0] += 1
            if calls[0] == {nth_rename} and not {after}:
                os._exit(9)
            real(src, dst)
            if calls[0] == {nth_rename}:
                os._exit(9)
        os.replace = dying_replace
        with atomic_folder(Path({str(target)!r})) as tmp:
            (tmp / "a.txt").write_text({text!r})
            (tmp / "b.txt").write_text({text!r})
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9


@pytest.mark.parametrize("nth_rename", [1, 2])  # before old aside, before new in
def test_a_kill_mid_replace_leaves_the_old_folder_recoverable(tmp_path, nth_rename):
    target = tmp_path / "out"
    _write(target, "old")
    _killed_at_rename(target, "new", nth_rename)
    recover(target)
    assert _contents(target) == {"a.txt": "old", "b.txt": "old"}
    clean_folder(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_kill_after_the_new_folder_is_in_keeps_the_new_one(tmp_path):
    target = tmp_path / "out"
    _write(target, "old")
    _killed_at_rename(target, "new", 2, after=True)
    assert (tmp_path / ("out" + ASIDE)).is_dir()  # killed before the old copy was removed
    clean_folder(tmp_path)
    assert _contents(target) == {"a.txt": "new", "b.txt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_kill_mid_write_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "out"
    _write(target, "old")
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from omnilm.files import atomic_folder
        with atomic_folder(Path({str(target)!r})) as tmp:
            (tmp / "a.txt").write_text("new")
            os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert _contents(target) == {"a.txt": "old", "b.txt": "old"}
    _write(target, "newer")  # the next write clears what the killed one left
    assert _contents(target) == {"a.txt": "newer", "b.txt": "newer"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_mid_replace_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    _write(target, "old")
    with pytest.raises(ValueError, match="half way"):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise ValueError("half way")
    assert _contents(target) == {"a.txt": "old", "b.txt": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_rename_mid_replace_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _write(target, "old")
    real, calls = os.replace, []

    def failing_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder moving in
            raise OSError(errno.EXDEV, "cross-device link")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_second_rename)
    with pytest.raises(OSError, match="cross-device"):
        _write(target, "new")
    monkeypatch.undo()
    assert _contents(target) == {"a.txt": "old", "b.txt": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_feature_cache_reader_recovers_an_interrupted_rebuild(tmp_path):
    import json

    import numpy as np

    from omnilm.data.feature_cache import FeatureCache

    aside = tmp_path / ("cache" + ASIDE)  # as a kill between the two renames leaves it
    aside.mkdir()
    np.save(aside / "features.npy", np.ones((1, 2, 3), dtype=np.float16))
    (aside / "index.json").write_text(json.dumps({"a.jpg": 0}))
    (aside / "meta.json").write_text(json.dumps({"encoder": {"type": "clip"}, "count": 1}))
    cache = FeatureCache.open(tmp_path / "cache", {"type": "clip"})
    assert len(cache) == 1 and cache.get("a.jpg").shape == (2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_a_full_disk_is_one_line_naming_the_target_and_sizes(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(DiskFull, match=r"^disk full while writing \S+out: it needs about 2\.00MB, [\d.]+[kMGT]?B free"):
        with atomic_file(target, needed=2_000_000) as tmp:
            tmp.write_text("part")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "w.bin"
    for text in ("one", "two"):
        with atomic_file(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text(text)
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_keep_existing_drops_the_second_writer(tmp_path):
    target = tmp_path / "cache"
    for text in ("first", "second"):
        with atomic_folder(target, keep_existing=True) as tmp:
            (tmp / "a.txt").write_text(text)
    assert _contents(target) == {"a.txt": "first"}
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
