#!/usr/bin/env bash
# Train the continuity campaign's architecture for a fixed time budget on one GPU (issue 28): `make train-gpu`.
# RECIPE (phantom, voxel size, train params) and the budget are explicit; a second call resumes from OUT.
#   usage: scripts/train-gpu.sh RECIPE OUT SECONDS DEVICE [PHANTOM_JSON]
# PHANTOM_JSON replaces the recipe's phantom (the CPU test uses a small one). Needs a torch build for DEVICE.
set -euo pipefail
recipe=$1 out=$2 seconds=$3 device=$4 phantom=${5:-}
python=${PYTHON:-.venv/bin/python}
read -r phantom_json voxel params < <("$python" - "$recipe" "$seconds" "$phantom" <<'PY'
import json, sys
recipe = json.load(open(sys.argv[1]))
params = {**recipe["params"], "max_seconds": float(sys.argv[2])}
phantom = json.loads(sys.argv[3]) if sys.argv[3] else recipe["phantom"]
print(json.dumps(phantom, separators=(",", ":")), ",".join(map(str, recipe["voxel_size"])),
      json.dumps(params, separators=(",", ":")))
PY
)
exec "$python" -m connectomix train --phantom "$phantom_json" --voxel-size ${voxel//,/ } --out "$out" \
    --device "$device" --no-progress --params "$params"
