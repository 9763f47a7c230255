#!/usr/bin/env bash
# Reproduce a bundled demo model (sigma_core/sigma_core/assets/sigma_nano_synthetic[_depth].pt) and its report:
# synthetic data -> sigma-train (configs/synthetic_demo[_depth].yaml, 5-25 min on one CPU thread) -> half-precision
# export. Usage: bash tools/train_demo_model.sh [--modality thermal|depth] [build-dir]
# (extra sigma-train overrides via SIGMA_TRAIN_ARGS)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
modality=thermal
if [[ "${1:-}" == "--modality" ]]; then
  modality="${2:?--modality needs thermal or depth}"
  shift 2
fi
case "$modality" in
  thermal) config=synthetic_demo; suffix="" ;;
  depth) config=synthetic_demo_depth; suffix="_depth" ;;
  *) echo "train_demo_model.sh: error: --modality must be thermal or depth, got '$modality'" >&2; exit 2 ;;
esac
build="${1:-$root/build}"
# shellcheck disable=SC1091
[[ -z "${VIRTUAL_ENV:-}" && -f "$root/tools/env.sh" ]] && source "$root/tools/env.sh"
export OMP_NUM_THREADS=1
python -m sigma_core.engine.demo_model data --modality "$modality" --root "$build/demo${suffix}_data"
# shellcheck disable=SC2086
python -m sigma_core.cli.train --config "$config" data.root="$build/demo${suffix}_data" \
  train.out_dir="$build/demo${suffix}_run" train.progress=false ${SIGMA_TRAIN_ARGS:-}
python -m sigma_core.engine.demo_model export --run "$build/demo${suffix}_run" --data "$build/demo${suffix}_data" \
  --out "$root/sigma_core/sigma_core/assets"
