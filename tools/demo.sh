#!/usr/bin/env bash
# The main job: the node with the bundled model on a synthetic bag, replayed live, with a summary report.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh
# shellcheck disable=SC1091
source tools/env.sh
exec python -m sigma_ros.replay.demo "$@"
