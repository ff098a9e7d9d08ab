"""Sweep backbones through FineTuner and print a failure table (issue 3).

Each case is ``tests/backbones/sweep_checks.run_case``: build ``FineTuner(spec, 3, pretrained=False,
image_size=s, strategy=FrozenBackbone())``, check the new head, layer groups, data config, frozen
parameters and ``summary()``, and run a forward pass in eval and train mode. A case passes if that
works at some input size; the smallest such size is reported.

    python benchmarks/backbone_sweep.py                      # all torchvision + 100 random timm names
    python benchmarks/backbone_sweep.py --timm-sample 0 --timm-all
    python benchmarks/backbone_sweep.py --write-table        # regenerate tests/backbones/sweep_table.json

``--write-table`` picks, for every timm family (the module a model is defined in), its smallest model
by parameter count (counted on the meta device, ~7 minutes for all of timm on one core) and the
smallest input each representative and each torchvision model accepts; the tests read that table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "backbones")]

from sweep_checks import TABLE, run_case  # noqa: E402

SIZES = (14, 16, 28, 32, 48, 56, 64, 96, 112, 128, 160, 192, 224, 256, 288, 320, 384)
MAX_PARAMS = 1_500_000_000  # larger models would not fit this box's memory next to others' jobs


def param_count(name: str) -> int:
    """Parameters of timm model ``name``, counted without allocating them."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def config_sizes(spec: str) -> tuple[int, int]:
    """(smallest, native) input size from the weights' config, read without building the model."""
    registry, name = spec.split("/", 1)
    if registry == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name, allow_unregistered=True)
        native = int(tuple(getattr(cfg, "input_size", None) or (3, 224, 224))[-1])
        smallest = getattr(cfg, "min_input_size", None)
        return (int(smallest[-1]) if smallest else 1), native
    from finetunekit.backbones.torchvision_adapter import data_config_dict

    return 1, int(data_config_dict(name).get("input_size", (3, 224, 224))[-1])


def smallest_size(spec: str, sizes: tuple[int, ...]) -> tuple[int | None, str, float]:
    """(size, "", seconds) for the smallest size that passes, else (None, last error, seconds)."""
    start, error = time.perf_counter(), ""
    for size in sizes:
        try:
            run_case(spec, size)
            return size, "", time.perf_counter() - start
        except Exception as e:  # the table reports every kind of failure
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
            if "--trace" in sys.argv:
                traceback.print_exc()
    return None, error, time.perf_counter() - start


def candidate_sizes(spec: str, fine: bool) -> tuple[int, ...]:
    """Sizes to try, smallest first, up to the native size. The fine search (for the test table)
    ignores the config's ``min_input_size``, which is not a hard limit (DeepSeek-ViT: 126, runs at
    28); the quick one starts there to save failing attempts."""
    smallest, native = config_sizes(spec)
    if fine:
        smallest = 1
    base = SIZES if fine else (28, 32, 64, 128, 224)
    return tuple(sorted({s for s in base if smallest <= s <= max(native, 224)} | {native}))


def sweep(specs: list[str], fine: bool) -> dict[str, tuple[int | None, str, float]]:
    results = {}
    for i, spec in enumerate(specs):
        results[spec] = smallest_size(spec, candidate_sizes(spec, fine))
        size, error, secs = results[spec]
        status = f"ok at {size}" if size else f"FAIL {error}"
        print(f"[{i + 1}/{len(specs)}] {spec:55s} {secs:6.1f}s {status}", flush=True)
    return results


def timm_sample(n: int, seed: int, all_names: bool) -> tuple[list[str], dict[str, str]]:
    """Random timm names (or all), minus those too large to build here (reported as skipped)."""
    import timm

    names = timm.list_models()
    chosen = names if all_names else random.Random(seed).sample(names, min(n, len(names)))
    skipped = {}
    for name in chosen:
        count = param_count(name)
        if count > MAX_PARAMS:
            skipped[f"timm/{name}"] = f"{count / 1e9:.1f}B parameters"
    return [f"timm/{n}" for n in chosen if f"timm/{n}" not in skipped], skipped


def print_table(results: dict[str, tuple[int | None, str, float]], skipped: dict[str, str]) -> None:
    print(f"\n{'registry':12s} {'cases':>6s} {'passed':>7s} {'failed':>7s} {'skipped':>8s} {'seconds':>8s}")
    for registry in ("torchvision", "timm"):
        rows = {k: v for k, v in results.items() if k.startswith(registry + "/")}
        if not rows:
            continue
        failed = sum(1 for size, _, _ in rows.values() if size is None)
        skip = sum(1 for k in skipped if k.startswith(registry + "/"))
        secs = sum(t for _, _, t in rows.values())
        print(f"{registry:12s} {len(rows):6d} {len(rows) - failed:7d} {failed:7d} {skip:8d} {secs:8.1f}")
    errors = Counter(e.split(":")[0] for size, e, _ in results.values() if size is None)
    for spec, (size, error, _) in results.items():
        if size is None:
            print(f"  FAIL {spec}: {error}")
    for spec, why in skipped.items():
        print(f"  SKIP {spec}: {why}")
    if errors:
        print("failures by error type:", dict(errors))


def write_table(counts_file: str | None) -> None:
    """Smallest model per timm family and smallest input per case -> tests/backbones/sweep_table.json.

    ``counts_file`` caches parameter counts (JSON name -> count) between runs.
    """
    import timm
    import torchvision

    from finetunekit.backbones.timm_adapter import families
    from finetunekit.backbones.torchvision_adapter import all_names

    cache = Path(counts_file) if counts_file else None
    counts: dict[str, int] = json.loads(cache.read_text()) if cache and cache.exists() else {}
    reps = {}
    for family, names in sorted(families().items()):
        counts.update({n: param_count(n) for n in names if n not in counts})
        reps[family] = min(names, key=lambda n: (counts[n], n))
        print(f"{family:28s} {reps[family]:45s} {counts[reps[family]] / 1e6:8.2f}M", flush=True)
    tv = sweep([f"torchvision/{n}" for n in all_names()], fine=True)
    tm = sweep([f"timm/{n}" for n in reps.values()], fine=True)
    table = {
        "versions": {"timm": timm.__version__, "torchvision": torchvision.__version__},
        "torchvision": {k.split("/", 1)[1]: v[0] for k, v in tv.items()},
        "timm": {f: [n, tm[f"timm/{n}"][0]] for f, n in reps.items()},
    }
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    if cache:
        cache.write_text(json.dumps(counts))
    print_table({**tv, **tm}, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--timm-sample", type=int, default=100, help="random timm names to sweep")
    parser.add_argument("--timm-all", action="store_true", help="sweep every timm name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torchvision", action="store_true")
    parser.add_argument("--write-table", action="store_true")
    parser.add_argument("--param-counts", help="JSON cache of timm parameter counts for --write-table")
    parser.add_argument("--trace", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"torch threads: {torch.get_num_threads()}")
    if args.write_table:
        write_table(args.param_counts)
        return
    from finetunekit.backbones.torchvision_adapter import all_names

    specs = [] if args.no_torchvision else [f"torchvision/{n}" for n in all_names()]
    skipped: dict[str, str] = {}
    if args.timm_sample or args.timm_all:
        timm_specs, skipped = timm_sample(args.timm_sample, args.seed, args.timm_all)
        specs += timm_specs
    start = time.perf_counter()
    results = sweep(specs, fine=False)
    print_table(results, skipped)
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
