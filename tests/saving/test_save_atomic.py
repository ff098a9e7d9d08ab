"""ft.save goes through the one writer of model folders: a kill at any instant leaves the old or the new
save, concurrent saves end with one complete save, leftovers of killed saves are removed by the next
save to the same place (and a live writer's are not), and a folder holding anything else is refused."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from saving_harness import load, same, snapshot, tuner, weights

from finetunekit import FineTuner
from finetunekit.errors import CheckpointError
from finetunekit.saving import checkpoint
from finetunekit.saving import files as fs

fork = multiprocessing.get_context("fork")


def two_versions() -> tuple[FineTuner, FineTuner]:
    """Two saves that differ in weights and in config (class names), so a mixture is detectable."""
    a, b = tuner(class_names=["a0", "a1", "a2"]), tuner(class_names=["b0", "b1", "b2"])
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(1.0)
    return a, b


def consistent(folder: Path, a: FineTuner, b: FineTuner) -> str:
    """Load ``folder`` and say which version it is; fail on a mixture or an unloadable folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # '.previous' fallback after a kill mid-swap
        loaded = load(folder)
    got = weights(loaded)
    version = "a" if same(got, weights(a)) else "b" if same(got, weights(b)) else "mixed"
    assert version != "mixed", "the weights are neither the old nor the new save"
    assert loaded.class_names == [f"{version}{i}" for i in range(3)], "weights and config disagree"
    return version


def test_save_into_a_folder_with_other_files_is_refused_and_they_survive(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"notes\.txt.*would be lost"):
        tuner().save(tmp_path / "run")
    assert snapshot(tmp_path) == before


def test_save_onto_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model").write_text("a file")
    with pytest.raises(CheckpointError, match="is a file"):
        tuner().save(tmp_path / "model")
    assert (tmp_path / "model").read_text() == "a file"


def test_resave_replaces_the_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    a, b = two_versions()
    a.save(tmp_path / "m")
    b.save(tmp_path / "m")
    assert consistent(tmp_path / "m", a, b) == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _killed_leftovers(tmp_path: Path) -> list[Path]:
    """What kills at different instants leave: an unlocked staging folder, one killed before it took
    its lock, a trash folder, a stale .tmp in the parent and an old-style .tmp inside the folder."""
    staged = tmp_path / ".m.partial-0123abcd"
    staged.mkdir()
    (staged / ".finetunekit-writing").write_text("")
    (staged / "model.safetensors").write_bytes(b"half")
    early = tmp_path / ".m.partial-89abcdef"
    early.mkdir()
    trash = tmp_path / ".m.previous.trash-00ff00ff"
    trash.mkdir()
    (trash / "config.json").write_text("{}")
    stale = tmp_path / ".m.abc123.tmp"
    stale.write_bytes(b"x")
    inside = tmp_path / "m" / ".model.safetensors.q1w2e3.tmp"
    inside.write_bytes(b"partial weights")
    return [staged, early, trash, stale, inside]


def test_the_next_save_removes_what_killed_saves_left(tmp_path: Path) -> None:
    tuner().save(tmp_path / "m")
    leftovers = _killed_leftovers(tmp_path)
    mine = tmp_path / ".m.notes"  # not a name finetunekit writes: never touched
    mine.write_text("keep")
    tuner().save(tmp_path / "m")
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.notes", "m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
    ]


def test_a_live_writers_staging_folder_is_not_removed(tmp_path: Path) -> None:
    live = tmp_path / ".m.partial-feedf00d"
    live.mkdir()
    fd = os.open(live / ".finetunekit-writing", os.O_RDWR | os.O_CREAT)
    try:
        fs.hold_lock(fd)
        tuner().save(tmp_path / "m")
        assert live.is_dir()  # its writer (this process, by the lock) is alive
    finally:
        os.close(fd)
    tuner().save(tmp_path / "m")
    assert not live.exists()


def test_a_stale_tmp_next_to_a_weights_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    (tmp_path / ".w.safetensors.zz9.tmp").write_bytes(b"x")
    fs.atomic_write_bytes(tmp_path / "w.safetensors", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def _save_repeatedly(ft: FineTuner, path: Path, times: int) -> None:
    torch.set_num_threads(1)
    for _ in range(times):
        ft.save(path)


def test_concurrent_saves_end_with_one_complete_save(tmp_path: Path) -> None:
    a, b = two_versions()
    workers = [fork.Process(target=_save_repeatedly, args=(ft, tmp_path / "m", 8)) for ft in (a, b)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]  # both saves reported success, rightly
    assert consistent(tmp_path / "m", a, b) in ("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    checkpoint.verify(tmp_path / "m")


def _save_forever(a: FineTuner, b: FineTuner, path: Path) -> None:
    torch.set_num_threads(1)
    while True:
        a.save(path)
        b.save(path)


@pytest.mark.slow
def test_kill_9_at_random_instants_leaves_the_old_or_the_new_save(tmp_path: Path) -> None:
    """24 trials: a child saves two versions in turn; SIGKILL at a random instant; the folder must load
    as exactly one version, and the next save must leave no temp files."""
    a, b = two_versions()
    path = tmp_path / "m"
    a.save(path)
    rng = random.Random(13)
    seen: dict[str, int] = {}
    start = time.monotonic()
    for _ in range(24):
        child = fork.Process(target=_save_forever, args=(a, b, path))
        child.start()
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        mid_swap = not path.exists()
        version = consistent(path, a, b)
        key = version + (" (from .previous)" if mid_swap else "")
        seen[key] = seen.get(key, 0) + 1
        (a if version == "b" else b).save(path)  # the next save cleans up after the killed one
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert time.monotonic() - start < 60
    assert len(seen) >= 2, seen  # kills struck while either version was the current one


def test_loads_during_concurrent_saves_see_one_complete_version(tmp_path: Path) -> None:
    a, b = two_versions()
    path = tmp_path / "m"
    a.save(path)
    child = fork.Process(target=_save_forever, args=(a, b, path))
    child.start()
    try:
        versions = {consistent(path, a, b) for _ in range(20)}  # each load: one whole save, no error
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
    assert versions <= {"a", "b"}


def test_save_creates_missing_parent_folders(tmp_path: Path) -> None:
    a, b = two_versions()
    a.save(tmp_path / "runs" / "exp" / "m")
    assert consistent(tmp_path / "runs" / "exp" / "m", a, b) == "a"
    assert sorted(p.name for p in (tmp_path / "runs" / "exp").iterdir()) == ["m"]
