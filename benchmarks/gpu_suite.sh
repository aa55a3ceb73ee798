#!/usr/bin/env bash
# GPU measurements in one go, for a machine that is lent for minutes: ViT-B/16 MAE/JEPA samples/s,
# memory and MFU vs timm (eager and compiled), token dropping, core MAE/JEPA step throughput,
# our medical MAE step vs MONAI's MaskedAutoEncoderViT, point-cloud step cost vs points, and the
# whole demo (generate -> pretrain with the `-gpu` recipe -> probe -> export -> embed) per modality.
# Each part runs on its own under a time limit, so one failure or overrun never hides the others.
#
#     bash benchmarks/gpu_suite.sh OUT_DIR [DEMO_STEPS] [DEMO_SECONDS] [TOTAL_SECONDS]
#
# TOTAL_SECONDS (default 540, under one 10-minute device call) bounds the whole suite: each part gets
# at most what is left, and parts that would start with under 20 s left are skipped (and logged).
# Writes OUT_DIR/gpu_suite.log (everything printed) and the benchmarks' results files under
# OUT_DIR/results/. Needs the project importable (pip install -e . or PYTHONPATH=<repo>).
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR [DEMO_STEPS] [DEMO_SECONDS] [TOTAL_SECONDS]}
steps=${2:-150}
limit=${3:-150}
total=${4:-540}
start=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/results"
log="$out/gpu_suite.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}

part() {  # part NAME SECONDS CMD...: run one part under a time limit, log its output and exit status
    local name=$1 secs=$2; shift 2
    local left=$((total - ($(date +%s) - start)))
    if [ "$left" -lt 20 ]; then echo "===== $name: skipped, ${left}s left of ${total}s" >>"$log"; return; fi
    [ "$secs" -gt "$left" ] && secs=$left
    echo "===== $name ($(date -u +%T), limit ${secs}s)" >>"$log"
    timeout "$secs" "$@" >>"$log" 2>&1
    echo "===== $name: exit $? ($(date -u +%T))" >>"$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } >>"$log" 2>&1
cd "$repo"
# issue 36's GPU figures first (they are what a short loan must not miss):
# ViT-B/16 MAE and JEPA at the largest batch that fits, eager then compiled, beside timm at equal tokens
part gpu_step_eager 150 $py benchmarks/gpu_step.py --out "$out/results/gpu_step-eager.json"
part gpu_step_compiled 240 $py benchmarks/gpu_step.py --compile --out "$out/results/gpu_step-compiled.json"
part token_dropping_cuda 60 $py benchmarks/token_dropping.py --device cuda --batch 32 --steps 10 --rounds 3 \
    --out "$out/results/token_dropping-cuda.json"
part core_throughput_bf16 90 $py benchmarks/core_throughput.py --device cuda --precision bf16
cp benchmarks/results/core_throughput_cuda.json "$out/results/" 2>/dev/null
part medical_mae_step_vs_monai 90 $py benchmarks/medical_mae_step.py --device cuda --batch 8 --threads 8 --steps 10 \
    --out "$out/results/medical_mae_step-cuda.json"
part pointcloud_scaling 90 $py benchmarks/pointcloud_scaling.py --device cuda --bf16 --batch 16 --repeats 5 --threads 8 \
    --tag cuda --out "$out/results"
for m in pointcloud graph speech earth medical; do
    part "demo_$m" "$limit" $py -m foundation.cli demo --modality "$m" --recipe "$m-mae-gpu" --dir "/tmp/gpu-demo-$m" \
        train.steps="$steps" train.warmup_steps=$((steps / 5)) train.checkpoint_every=100000
    cp "/tmp/gpu-demo-$m/run/summary.json" "$out/results/demo_$m-summary.json" 2>/dev/null
done
echo "done $(date -u +%T)" >>"$log"
