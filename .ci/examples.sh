#!/usr/bin/env bash
# CI: run every example in its fast mode (FINETUNEKIT_FAST=1: a few samples, 1 epoch), so none can rot.
# Needs the README's install (pip install -e ".[dev]", which includes the demo extras). Each example runs
# in a scratch folder, so its runs/ and plots never land in the checkout; the first failure stops CI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
export FINETUNEKIT_FAST=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
for example in "$root"/examples/*.py; do
  name="$(basename "$example")"
  echo "== examples/$name"
  start=$SECONDS
  python3 "$example"
  echo "-- examples/$name passed in $((SECONDS - start)) s"
done
echo "== examples/distributed_train.py under torchrun, 2 processes (gloo on CPU)"
start=$SECONDS
python3 -m torch.distributed.run --standalone --nproc_per_node=2 "$root/examples/distributed_train.py"
echo "-- examples/distributed_train.py (2 processes) passed in $((SECONDS - start)) s"
