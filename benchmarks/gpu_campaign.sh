#!/usr/bin/env bash
# The GPU campaign in one command (README "GPU"): on a lent GPU machine (torch, torchvision,
# jax with CUDA; no TensorFlow, no Keras), install Keras from the wheels carried in .whl/
# into /tmp/site, run `bench throughput --sweep` within what is left of CAMPAIGN_SECONDS
# (default 420: 7 minutes, the install included) and leave the results under $OUT:
#   $OUT/sweep/throughput.json, throughput.md, throughput.png   the sweep
#   $OUT/campaign.log                                            everything printed
#   $OUT/nvidia-smi.txt, $OUT/pip.txt                            the card and the packages
# Fire it with one device `run` call from the repository root, carrying .whl:
#   bash benchmarks/gpu_campaign.sh
# Without $OUT (a machine of your own) it writes under results/gpu-campaign/.
set -uo pipefail
start=$(date +%s)
OUT=${OUT:-results/gpu-campaign}
mkdir -p "$OUT"
exec > >(tee "$OUT/campaign.log") 2>&1
export PYTHONUNBUFFERED=1 TRANSFER_BENCH_DATA=${TRANSFER_BENCH_DATA:-/tmp/transfer-bench-data}
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit \
    --format=csv > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available" > "$OUT/nvidia-smi.txt"
cat "$OUT/nvidia-smi.txt"

if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "campaign: the carried wheels did not install"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "campaign: no wheels in .whl/: keras-jax and keras-torch rows will say keras is not installed"
fi
"$PY" -m pip list 2>/dev/null | grep -iE '^(keras|jax|jaxlib|torch|torchvision|optree|namex|numpy|pillow) ' \
    > "$OUT/pip.txt"
cat "$OUT/pip.txt"
"$PY" -m benchmarks.cli list || true

# what is left of the campaign's time, less 20 s for the report and the copy back
budget=$(( ${CAMPAIGN_SECONDS:-420} - ($(date +%s) - start) - 20 ))
echo "campaign: sweep budget ${budget} s"
timeout --signal=TERM --kill-after=10 $(( budget + 30 )) \
    "$PY" -m benchmarks.cli throughput --sweep --budget-seconds "$budget" --out "$OUT/sweep"
status=$?
echo "campaign: sweep exited with ${status} after $(( $(date +%s) - start )) s in all"
[ -f "$OUT/sweep/throughput.md" ] && cat "$OUT/sweep/throughput.md"
exit $status
