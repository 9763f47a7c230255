#!/usr/bin/env bash
# Reproduce the bundled demo model (sigma_core/sigma_core/assets/sigma_nano_synthetic.pt) and its report:
# synthetic data -> sigma-train (configs/synthetic_demo.yaml, ~25 min on one CPU thread) -> half-precision export.
# Usage: bash tools/train_demo_model.sh [build-dir]   (extra sigma-train overrides via SIGMA_TRAIN_ARGS)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
# shellcheck disable=SC1091
[[ -z "${VIRTUAL_ENV:-}" && -f "$root/tools/env.sh" ]] && source "$root/tools/env.sh"
export OMP_NUM_THREADS=1
python -m sigma_core.engine.demo_model data --root "$build/demo_data"
# shellcheck disable=SC2086
python -m sigma_core.cli.train --config synthetic_demo data.root="$build/demo_data" train.out_dir="$build/demo_run" \
  train.progress=false ${SIGMA_TRAIN_ARGS:-}
python -m sigma_core.engine.demo_model export --run "$build/demo_run" --data "$build/demo_data" \
  --out "$root/sigma_core/sigma_core/assets"
