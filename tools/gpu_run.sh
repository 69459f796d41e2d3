#!/usr/bin/env bash
# The GPU benchmark on a machine with JAX, PyTorch and timm but no Keras, no TensorFlow and no
# network (docs/gpu.md): installs the carried wheels (keras, namex, optree, keras_inception)
# into a folder of its own without any index, checks what it imports, then runs
# tools/gpu_benchmark.py on Keras's JAX and PyTorch backends beside timm, within the budget;
# the JSONL records, the log and the table land in $OUT as each case finishes.
#
#   bash tools/gpu_run.sh                       # on the GPU machine, from the checkout's root
#   GPU_RUN_DEVICE=cpu GPU_RUN_WHEELS=/tmp/whl PYTHON=/work/venv-gpu/bin/python \
#     GPU_RUN_ARGS="--models inception_v3 --batch 2 ..." OUT=/tmp/out bash tools/gpu_run.sh
#
# Settings (environment): GPU_RUN_WHEELS (.whl), GPU_RUN_SITE (/tmp/site), GPU_RUN_DEVICE (gpu),
# GPU_RUN_BACKENDS ("jax torch"), GPU_RUN_BUDGET_S (420: the run's seconds; the install and the
# checks take about 10 more), GPU_RUN_ARGS (more arguments for tools/gpu_benchmark.py), PYTHON.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
wheels=${GPU_RUN_WHEELS:-$root/.whl}
site=${GPU_RUN_SITE:-/tmp/site}
out=${OUT:-$root/gpu_out}
mkdir -p "$out"

shopt -s nullglob
found=("$wheels"/*.whl)
if [ ${#found[@]} -eq 0 ]; then
    echo "gpu_run.sh: no wheels in $wheels (docs/gpu.md builds them; carry that folder)" >&2
    exit 2
fi
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${found[@]}"
export PYTHONPATH="$site"
export PYTHONUNBUFFERED=1

# keras_inception must come from the wheel, not the checkout: run elsewhere, print where from.
# (Not from $OUT either: only what the run writes there comes back, at most 8 files.)
work=$(mktemp -d)
(cd "$work" && "$python" - <<'EOF' 2>&1 | tee "$out/gpu_env.txt"
import importlib.metadata as m
import os
import subprocess

for name in ("keras", "keras-inception", "jax", "jaxlib", "torch", "timm", "tensorflow"):
    try:
        print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name} not installed")
os.environ["KERAS_BACKEND"] = "torch"
import keras_inception  # noqa: E402

print("keras_inception from", os.path.dirname(keras_inception.__file__))
try:
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
except OSError:
    print("no nvidia-smi")
EOF
)

read -r -a backends <<<"${GPU_RUN_BACKENDS:-jax torch}"
read -r -a extra <<<"${GPU_RUN_ARGS:-}"
cd "$work"
exec "$python" "$root/tools/gpu_benchmark.py" --device "${GPU_RUN_DEVICE:-gpu}" --backend "${backends[@]}" \
    --budget-s "${GPU_RUN_BUDGET_S:-420}" --out-dir "$out" "${extra[@]}"
