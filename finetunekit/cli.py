"""The ``finetunekit`` command: train, evaluate, predict, export and rank from a shell.

A run folder holds ``model/`` (``ft.save``), ``history.csv``, ``metrics.json`` and, while training,
``backup/`` (so an interrupted ``train`` continues with ``--resume``). Exit status: 0 success, 2 bad
usage (argparse), 1 a finetunekit error, printed as one line without a traceback, 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetunekit.errors import ConfigError, DataError, FineTuneKitError

STRATEGIES = {
    "full": ("FullFineTune", {}),
    "frozen": ("FrozenBackbone", {}),
    "gradual": ("GradualUnfreeze", {"every": 1}),
    "discriminative": ("DiscriminativeLR", {}),
    "lpft": ("LPFT", {}),
}
EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}


def _strategy(name: str) -> Any:
    from finetunekit import strategies

    cls_name, kwargs = STRATEGIES[name]
    return getattr(strategies, cls_name)(**kwargs)


def _model_dir(run: str) -> Path:
    """A run folder (with model/) or a model folder itself."""
    path = Path(run)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise ConfigError(
        f"RUN={run!r} holds no trained model (no model/config.json); expected a folder "
        "written by `finetunekit train ... --out RUN`. Fix the path, or train first."
    )


def _load(run: str, device: str) -> Any:
    from finetunekit import FineTuner

    return FineTuner.load(_model_dir(run), device=device)


def _image_files(paths: Sequence[str]) -> list[Path]:
    """FILES as given; a folder stands for the image files directly inside it, sorted."""
    from finetunekit.data.folders import IMAGE_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{str(p)!r} does not exist; expected image files or folders of images")
    if not out:
        raise DataError(f"no image files in {list(paths)}; expected files such as photo.jpg")
    return out


def load_images(
    files: Sequence[Path], size: tuple[int, int], in_chans: int, interpolation: str, progress: bool = False
) -> np.ndarray:
    """uint8 N×H×W×C at ``size``, resized as ``predict`` resizes (antialiased, the model's interpolation)."""
    import torch
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    from finetunekit.backbones.base import DataConfig
    from finetunekit.data.transforms import ImageTransform, to_chw_uint8

    transform = ImageTransform(
        DataConfig(input_size=(in_chans, *size), interpolation=interpolation), in_chans, False
    )
    images = []
    for path in tqdm(files, desc="loading images", unit="img", disable=not progress, file=sys.stderr):
        try:
            with Image.open(path) as image:
                image.load()
                chw = to_chw_uint8(image.convert("RGB" if in_chans == 3 else image.mode), in_chans, str(path))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"could not read image {str(path)!r} ({e}); remove or replace it") from e
        assert chw is not None
        chw = chw.expand(in_chans, -1, -1) if chw.shape[0] == 1 else chw
        images.append(transform.resize(chw).permute(1, 2, 0))
    return torch.stack(images).numpy()


def _folder_arrays(data_dir: str, size: int, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from finetunekit.data.folders import scan_folder

    files, labels, names = scan_folder(Path(data_dir), None, "DATA_DIR")
    return load_images(files, (size, size), 3, "bilinear", progress), labels, names


# ------------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from finetunekit import FineTuner
    from finetunekit.callbacks import BackupAndRestore, CSVLogger
    from finetunekit.data.folders import scan_folder

    out = Path(args.out)
    backup = out / "backup"
    if (out / "model").exists() and not args.resume:
        raise ConfigError(
            f"--out {str(out)!r} already holds a trained model; expected a new folder. "
            "Fix: choose another --out, or delete it."
        )
    if args.resume and not BackupAndRestore(backup).checkpoints():
        raise ConfigError(
            f"--resume: {str(backup)!r} has no backup to continue from; expected the --out of "
            "an interrupted train. Fix: drop --resume to start a new run."
        )
    _, _, names = scan_folder(Path(args.data_dir), None, "DATA_DIR")
    ft = FineTuner(
        args.backbone,
        num_classes=len(names),
        weights=args.weights,
        pretrained=not args.no_pretrained,
        strategy=_strategy(args.strategy),
        image_size=args.image_size,
        device=args.device,
        seed=args.seed,
        class_names=names,
    )
    ft.compile(lr=args.lr)
    callbacks = [BackupAndRestore(backup), CSVLogger(out / "history.csv", append=args.resume)]
    history = ft.fit(
        args.data_dir,
        batch_size=args.batch_size,
        epochs=args.epochs,
        augment=args.augment,
        validation_split=args.validation_split,
        callbacks=callbacks,
        verbose=0 if args.quiet else 1,
    )
    ft.save(out / "model")
    if backup.is_dir() and not any(backup.iterdir()):
        backup.rmdir()  # the run is complete: nothing left to resume
    final = {k: v[-1] for k, v in history.history.items() if v}
    (out / "metrics.json").write_text(json.dumps(final, indent=2, sort_keys=True))
    print(json.dumps({"run": str(out), "classes": names, **final}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from finetunekit.data.folders import scan_folder

    ft = _load(args.run, args.device)
    _, _, names = scan_folder(Path(args.data_dir), None, "DATA_DIR")
    if ft.class_names is not None and list(names) != list(ft.class_names):
        raise DataError(
            f"DATA_DIR's classes {names} are not the model's {ft.class_names}; expected the same "
            "class folder names. Fix: evaluate on a folder with those classes."
        )
    print(json.dumps(ft.evaluate(args.data_dir, batch_size=args.batch_size), sort_keys=True))
    return 0


def _rows(files: list[Path], probs: np.ndarray, names: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        {"file": str(f), "predictions": [{"label": names[j], "probability": float(p[j])} for j in idx]}
        for f, p, idx in zip(files, probs, order, strict=True)
    ]


def _csv(rows: list[dict[str, Any]], k: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", *(f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "probability"))])
    for row in rows:
        writer.writerow(
            [row["file"], *(v for p in row["predictions"] for v in (p["label"], f"{p['probability']:.6f}"))]
        )
    return buffer.getvalue()


def cmd_predict(args: argparse.Namespace) -> int:
    ft = _load(args.run, args.device)
    files = _image_files(args.files)
    _, h, w = (int(v) for v in ft.data_config.input_size)
    x = load_images(files, (h, w), ft.in_chans, ft.data_config.interpolation, progress=not args.quiet)
    probs = ft.predict(x, batch_size=args.batch_size)
    names = ft.class_names or [str(i) for i in range(ft.num_classes)]
    k = min(args.top_k, len(names))
    rows = _rows(files, probs, names, k)
    text = json.dumps(rows, indent=2) + "\n" if args.format == "json" else _csv(rows, k)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ft = _load(args.run, args.device)
    model_dir = _model_dir(args.run)
    path = Path(args.output) if args.output else model_dir.parent / f"model{EXPORT_SUFFIX[args.format]}"
    report = ft.export(path, format=args.format, preprocessing=not args.no_preprocessing)
    print(json.dumps(report.to_dict()))
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from finetunekit.tools.selection import rank_backbones

    weights = dict(_pair(w) for w in args.weights or [])
    unknown = sorted(set(weights) - set(args.backbones))
    if unknown:
        raise ConfigError(f"--weights names {unknown}, which are not in --backbones {args.backbones}")
    x, y, _ = _folder_arrays(args.data_dir, args.image_size, progress=not args.quiet)
    candidates = [(b, weights[b]) if b in weights else b for b in args.backbones]
    ranking = rank_backbones(
        candidates,
        x,
        y,
        method=args.method,
        names=args.backbones,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(ranking)
    return 0


def _pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ConfigError(
            f"--weights {text!r}: expected BACKBONE=FILE, e.g. timm/efficientnet_lite0=lite0.pth"
        )
    return name, path


# --------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _common(p: argparse.ArgumentParser, batch_size: int = 32) -> None:
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=_positive_int, default=batch_size)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetunekit", description="Fine-tune pretrained vision models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", help="fine-tune a backbone on a folder of class subfolders")
    t.add_argument("data_dir", metavar="DATA_DIR", help="one subfolder of images per class")
    t.add_argument("--backbone", required=True, help="timm/<name>, torchvision/<name>, hf-hub:org/repo")
    t.add_argument("--out", required=True, metavar="RUN", help="run folder to write (model/, history.csv)")
    t.add_argument("--strategy", choices=sorted(STRATEGIES), default="full")
    t.add_argument("--epochs", type=_positive_int, default=5)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--weights", metavar="FILE", help="local .pth/.safetensors backbone weights (no download)")
    t.add_argument("--no-pretrained", action="store_true", help="random init instead of registry weights")
    t.add_argument("--image-size", type=_positive_int, help="input size (default: the weights' own)")
    t.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True, help="flip + random crop"
    )
    t.add_argument("--validation-split", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _common(t)
    e = sub.add_parser("evaluate", help="loss and metrics of a run on a labelled folder")
    e.add_argument("run", metavar="RUN")
    e.add_argument("data_dir", metavar="DATA_DIR")
    _common(e)
    p = sub.add_parser("predict", help="top-k classes of image files, as CSV or JSON")
    p.add_argument("run", metavar="RUN")
    p.add_argument("files", metavar="FILES", nargs="+", help="image files, or folders of them")
    p.add_argument("--top-k", type=_positive_int, default=3)
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    _common(p)
    x = sub.add_parser("export", help="ONNX / TorchScript / ExportedProgram file of a run")
    x.add_argument("run", metavar="RUN")
    x.add_argument("--format", choices=sorted(EXPORT_SUFFIX), default="onnx")
    x.add_argument("--output", metavar="FILE", help="default: RUN/model.onnx (.pt, .pt2)")
    x.add_argument("--no-preprocessing", action="store_true", help="take normalized float N×C×H×W, not uint8")
    _common(x)
    r = sub.add_parser("rank", help="score backbones on a folder before fine-tuning any")
    r.add_argument("data_dir", metavar="DATA_DIR")
    r.add_argument("--backbones", nargs="+", required=True)
    r.add_argument("--weights", nargs="*", metavar="BACKBONE=FILE", help="local weights for some backbones")
    r.add_argument("--method", choices=("logme", "knn", "linear_probe"), default="logme")
    r.add_argument("--image-size", type=_positive_int, default=64)
    _common(r, batch_size=64)
    return parser


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "rank": cmd_rank,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``finetunekit`` console script and ``python -m finetunekit``."""
    args = build_parser().parse_args(argv)  # exits 2 with a usage message on bad arguments
    try:
        return COMMANDS[args.command](args)
    except FineTuneKitError as e:
        print(f"finetunekit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = " (continue with: finetunekit train ... --resume)" if args.command == "train" else ""
        print(f"finetunekit {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
