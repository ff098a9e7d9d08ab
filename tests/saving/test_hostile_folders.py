"""Hostile model folders: every attack ends in a CheckpointError naming the file or key, before anything
is parsed or used, and leaves the folder exactly as it was (nothing lost).

Each attacker edits files and then recomputes the manifest's checksums, so the checks that stop these
are the name, file-type, size and value checks, not the checksums.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import TinyNet
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from saving_harness import (
    edit_json,
    edit_manifest,
    entry,
    load,
    reseal,
    same,
    snapshot,
    tuner,
    weights,
    write_raw,
)

from finetunekit import FineTuner
from finetunekit.errors import CheckpointError, ConfigError


def _deep(d: dict[str, Any]) -> None:
    nested: Any = 1
    for _ in range(100):
        nested = [nested]
    d["strategy"]["extra"] = nested


def _very_deep(folder: Path) -> None:
    text = (folder / "config.json").read_text()
    write_raw(
        folder, "config.json", text.replace('"spec":', '"x": ' + "[" * 100_000 + "]" * 100_000 + ', "spec":')
    )


def _nan_text(folder: Path) -> None:
    text = (folder / "config.json").read_text().replace("0.485", "NaN")
    write_raw(folder, "config.json", text)


CONFIG_ATTACKS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("infinite std", lambda d: d["data_config"]["std"].__setitem__(0, float("inf")), "data_config.std[0]"),
    (
        "huge input_size",
        lambda d: d["data_config"].__setitem__("input_size", [3, 40000, 40000]),
        "data_config.input_size[1]",
    ),
    (
        "zero input_size",
        lambda d: d["data_config"].__setitem__("input_size", [3, 0, 16]),
        "data_config.input_size[1]",
    ),
    ("missing num_classes", lambda d: d.pop("num_classes"), "'num_classes' is missing"),
    ("string num_classes", lambda d: d.__setitem__("num_classes", "3"), "num_classes='3'"),
    ("bool num_classes", lambda d: d.__setitem__("num_classes", True), "num_classes=True"),
    ("huge num_classes", lambda d: d.__setitem__("num_classes", 10**12), "num_classes=1000000000000"),
    ("negative in_chans", lambda d: d.__setitem__("in_chans", -1), "in_chans=-1"),
    ("string mean", lambda d: d["data_config"].__setitem__("mean", "0.5"), "data_config.mean"),
    ("huge mean", lambda d: d["data_config"]["mean"].__setitem__(1, 1e30), "data_config.mean[1]"),
    ("empty std", lambda d: d["data_config"].__setitem__("std", []), "data_config.std"),
    ("missing data_config", lambda d: d.pop("data_config"), "'data_config' is missing"),
    (
        "bad interpolation",
        lambda d: d["data_config"].__setitem__("interpolation", "magic"),
        "data_config.interpolation",
    ),
    ("bad registry", lambda d: d["backbone"].__setitem__("registry", "evil"), "backbone.registry"),
    ("backbone not an object", lambda d: d.__setitem__("backbone", [1]), "backbone=[1]"),
    ("too many class names", lambda d: d.__setitem__("class_names", ["a", "b", "c", "d"]), "class_names"),
    ("class name not a string", lambda d: d.__setitem__("class_names", ["a", 2, "c"]), "class_names[1]"),
    ("newer format", lambda d: d.__setitem__("format_version", 99), "Upgrade finetunekit"),
    ("other format", lambda d: d.__setitem__("format", "keras"), "format='keras'"),
    ("nested 100 deep", _deep, "levels of nesting"),
    ("strategy without name", lambda d: d["strategy"].pop("name"), "strategy.name"),
]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    ft = tuner()
    ft.save(tmp_path / "model")
    return tmp_path / "model"


def refused(folder: Path, words: str, **kw: Any) -> CheckpointError:
    """Load must fail with ``words`` in the message and change nothing in the folder."""
    before = snapshot(folder) if folder.is_dir() else None
    with pytest.raises(CheckpointError) as info:
        load(folder, **kw)
    assert words in str(info.value), str(info.value)
    if before is not None:
        assert snapshot(folder) == before  # nothing lost, nothing written
    return info.value


@pytest.mark.parametrize(("case", "change", "words"), CONFIG_ATTACKS, ids=[c[0] for c in CONFIG_ATTACKS])
def test_config_values_are_validated(
    saved: Path, case: str, change: Callable[[dict[str, Any]], Any], words: str
) -> None:
    edit_json(saved, "config.json", change)
    error = refused(saved, words)
    assert "config.json" in str(error)
    refused(saved, words, verify=False)  # the value checks hold without a manifest too


def _huge_int(folder: Path) -> None:
    text = (folder / "config.json").read_text().replace('"num_classes": 3', '"num_classes": ' + "9" * 5000)
    write_raw(folder, "config.json", text)


RAW_ATTACKS: list[tuple[str, Callable[[Path], Any], str]] = [
    ("NaN literal", _nan_text, "data_config.mean[0]=nan"),
    (
        "Infinity literal",
        lambda f: write_raw(f, "config.json", (f / "config.json").read_text().replace("0.229", "Infinity")),
        "data_config.std[0]=inf",
    ),
    ("100000 levels of nesting", _very_deep, "nest"),
    ("5000-digit integer", _huge_int, "not valid JSON"),
    ("not UTF-8", lambda f: write_raw(f, "config.json", b"\xff\xfe{}"), "not valid JSON"),
    ("not JSON", lambda f: write_raw(f, "config.json", "{"), "not valid JSON"),
    ("JSON list", lambda f: write_raw(f, "config.json", "[]"), "config=[]"),
    (
        "pickle as weights",
        lambda f: write_raw(f, "model.safetensors", b"\x80\x04\x95" + b"\0" * 64),
        "not a readable safetensors",
    ),
    (
        "truncated weights",
        lambda f: write_raw(f, "model.safetensors", (f / "model.safetensors").read_bytes()[:50]),
        "not a readable safetensors",
    ),
]


@pytest.mark.parametrize(("case", "attack", "words"), RAW_ATTACKS, ids=[c[0] for c in RAW_ATTACKS])
def test_unparseable_files_are_refused_with_the_file_named(
    saved: Path, case: str, attack: Callable[[Path], Any], words: str
) -> None:
    attack(saved)
    refused(saved, words)


def _outside(folder: Path, name: str) -> Callable[[dict[str, Any]], Any]:
    """Point a manifest entry at a file outside the folder, with its true checksum."""

    def change(m: dict[str, Any]) -> None:
        target = (folder / name) if not os.path.isabs(name) else Path(name)
        if name.startswith(".."):
            target.write_text("secret")
        data = target.read_bytes() if target.is_file() else b""
        m["files"][name] = entry(data)

    return change


def _symlink_out(folder: Path) -> None:
    outside = folder.parent / "elsewhere.safetensors"
    shutil.copy(folder / "model.safetensors", outside)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(outside)


def _fifo(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")


def _dir_instead(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()


def _sparse_2gb(folder: Path) -> None:
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(2 << 30)  # sparse: no disk used, but 2 GB if read


MANIFEST_ATTACKS: list[tuple[str, Callable[[Path], Any], str]] = [
    ("dot-dot name", lambda f: edit_manifest(f, _outside(f, "../x")), "plain file name"),
    ("absolute name", lambda f: edit_manifest(f, _outside(f, "/etc/hostname")), "plain file name"),
    (
        "proc file",
        lambda f: edit_manifest(f, lambda m: m["files"].__setitem__("/proc/self/mem", entry(b""))),
        "plain file name",
    ),
    (
        "hidden name",
        lambda f: edit_manifest(f, lambda m: m["files"].__setitem__(".bashrc", entry(b""))),
        "plain file name",
    ),
    ("symlink out", _symlink_out, "symbolic link"),
    ("FIFO", _fifo, "FIFO"),
    ("folder instead of file", _dir_instead, "folder, not a plain file"),
    ("2 GB file, small size in manifest", _sparse_2gb, "Nothing was read"),
    (
        "size claimed negative",
        lambda f: edit_manifest(f, lambda m: m["files"]["config.json"].__setitem__("bytes", -5)),
        "bytes=-5",
    ),
    (
        "size claimed as string",
        lambda f: edit_manifest(f, lambda m: m["files"]["config.json"].__setitem__("bytes", "12")),
        "bytes='12'",
    ),
    (
        "sha not hex",
        lambda f: edit_manifest(f, lambda m: m["files"]["config.json"].__setitem__("sha256", "zz")),
        "sha256='zz'",
    ),
    (
        "weights not listed",
        lambda f: edit_manifest(f, lambda m: m["files"].pop("model.safetensors")),
        "does not list ['model.safetensors']",
    ),
    ("no files at all", lambda f: edit_manifest(f, lambda m: m.__setitem__("files", {})), "lists no files"),
    ("manifest not JSON", lambda f: (f / "manifest.json").write_text("{"), "not valid JSON"),
    (
        "manifest deep",
        lambda f: (f / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
        "not valid JSON",
    ),
    ("manifest huge", lambda f: (f / "manifest.json").write_text(" " * (2 << 20) + "{}"), "at most"),
    (
        "manifest version from the future",
        lambda f: edit_manifest(f, lambda m: m.__setitem__("format_version", 7)),
        "Upgrade finetunekit",
    ),
    (
        "manifest version a string",
        lambda f: edit_manifest(f, lambda m: m.__setitem__("format_version", "1")),
        "format_version='1'",
    ),
    ("manifest missing", lambda f: (f / "manifest.json").unlink(), "verify=False"),
    (
        "manifest a symlink",
        lambda f: (f / "manifest.json").symlink_to((f / "manifest.json").rename(f.parent / "m.json")),
        "symbolic link",
    ),
]


@pytest.mark.parametrize(("case", "attack", "words"), MANIFEST_ATTACKS, ids=[c[0] for c in MANIFEST_ATTACKS])
def test_manifest_attacks_are_refused_without_reading(
    saved: Path, case: str, attack: Callable[[Path], Any], words: str
) -> None:
    attack(saved)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(saved, words)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # kB: no file was read whole


def test_a_folder_without_manifest_loads_only_with_the_explicit_flag(saved: Path) -> None:
    ft_weights = weights(load(saved))
    (saved / "manifest.json").unlink()
    error = refused(saved, "FineTuner.load(path, verify=False)")
    assert "incomplete" in str(error)
    assert same(weights(load(saved, verify=False)), ft_weights)


def test_verify_false_still_refuses_unsafe_files(saved: Path) -> None:
    (saved / "manifest.json").unlink()
    _symlink_out(saved)
    refused(saved, "symbolic link", verify=False)


def test_values_are_checked_even_when_checksums_are_recomputed(saved: Path) -> None:
    edit_json(saved, "config.json", lambda d: d["data_config"]["mean"].__setitem__(0, None))
    reseal(saved)
    refused(saved, "data_config.mean[0]=None")


def test_a_manifest_listing_an_extra_safe_file_verifies_it_too(saved: Path) -> None:
    (saved / "notes.txt").write_text("hello")
    edit_manifest(saved, lambda m: m["files"].__setitem__("notes.txt", entry(b"hello!")))
    refused(saved, "notes.txt")


def test_the_written_config_is_plain_json(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    assert config["format"] == "finetunekit" and config["num_classes"] == 3
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]


def _poison_weights(folder: Path, value: float) -> None:
    state = dict(st_load((folder / "model.safetensors").read_bytes()))
    state["fc.weight"] = state["fc.weight"].clone().fill_(value)
    write_raw(folder, "model.safetensors", st_save(state))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(saved: Path, value: float) -> None:
    _poison_weights(saved, value)
    refused(saved, "'fc.weight' holds NaN or infinite values")


@pytest.mark.parametrize("path", ["", ".", ".."])
def test_a_save_path_naming_no_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(CheckpointError, match="names no folder of its own"):
        tuner().save(path)
    assert sorted(os.listdir(tmp_path)) == ["sub"] and os.listdir(tmp_path / "sub") == []


def test_a_model_too_large_to_load_back_cannot_be_built() -> None:
    with pytest.raises(ConfigError, match="at most 4096"):
        FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=40000)
