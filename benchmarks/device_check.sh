#!/usr/bin/env bash
# One pass of the GPU checks, run from the repository root on a machine with a CUDA device and no network:
#   bash benchmarks/device_check.sh
# Needs the wheels in .whl/ (open_clip_torch, ftfy, wcwidth; pure Python) and python3 with torch,
# torchvision, numpy, pillow, pytest and the other dependencies already installed. Every step has its own
# timeout and the whole pass a budget (DEVICE_CHECK_BUDGET seconds, default 420); a failing step does not
# stop the others. Logs and JSON figures go to $OUT (default /tmp/out); a summary of exit codes ends the run.
set -u

OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
BUDGET=${DEVICE_CHECK_BUDGET:-420}
DEADLINE=$((SECONDS + BUDGET))
IMAGES=${DEVICE_CHECK_IMAGES:-6000}  # generated JPEG files of 500x375, shared by the extraction runs
IMAGE_DIR=/tmp/taskres-bench-images
export OUT IMAGES IMAGE_DIR PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TASKRES_CACHE=/tmp/taskres-cache
export TQDM_MININTERVAL=5  # progress bars through a pipe: a line every 5 s, not a flood

NAMES=() CODES=() TIMES=()

# step NAME TIMEOUT_S COMMAND...: run with a timeout (cut to what is left of the budget), output to the
# console and to $OUT/NAME.log; its exit code and seconds go into the summary.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS - 5))
    if ((left < limit)); then limit=$left; fi
    echo
    echo "=== $name (timeout ${limit} s): $*"
    if ((limit < 15)); then
        echo "skipped: the budget of ${BUDGET} s is spent"
        NAMES+=("$name") CODES+=("skip") TIMES+=(0)
        return
    fi
    local start=$SECONDS
    timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee "$OUT/$name.log"  # bash: functions too
    local rc=${PIPESTATUS[0]}
    ((rc == 124 || rc == 137)) && echo "--- $name: timed out after ${limit} s"
    NAMES+=("$name") CODES+=("$rc") TIMES+=($((SECONDS - start)))
}

echo "=== machine"
date -u +%Y-%m-%dT%H:%M:%SZ
timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,clocks.max.sm --format=csv \
    || echo "nvidia-smi failed (rc $?)"
echo "cpus: $(nproc)   commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
timeout 60 python3 -c "
import platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| cudnn', torch.backends.cudnn.version(), '| available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('device:', torch.cuda.get_device_name(), torch.cuda.get_device_capability())
" 2>&1 | tee "$OUT/versions.log"

install_wheels() {
    ls -l .whl/*.whl || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || return 1
    PYTHONPATH=/tmp/site:$PWD/src python3 -c "
import open_clip, ftfy, wcwidth, taskres, torchvision, numpy
print('open_clip', open_clip.__version__, '| ftfy', ftfy.__version__, '| taskres', taskres.__version__,
      '| torchvision', torchvision.__version__, '| numpy', numpy.__version__, '| from', taskres.__file__)"
}
export -f install_wheels
step install 120 install_wheels
export PYTHONPATH=/tmp/site:$PWD/src

# (a) the CUDA tests against the CPU (tests/test_cuda.py). They skip where torch sees no GPU: that is a failure here.
cuda_tests() {
    python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" \
        || { echo "torch sees no CUDA device: tests/test_cuda.py would only skip"; return 3; }
    python3 -m pytest -q -p no:cacheprovider -rs --durations=8 --junitxml="$OUT/test_cuda.xml" tests/test_cuda.py
}
export -f cuda_tests
step test_cuda 120 cuda_tests

# (b) feature extraction, encoder alone vs the whole pipeline, random weights. The JPEG files are made once,
# by 16 processes, and shared by the runs (extract_pipeline.py makes only the files that are missing).
generate_images() {
    python3 - "$IMAGES" "$IMAGE_DIR" <<'EOF'
import os, sys, time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, "benchmarks")
from extract_pipeline import make_images  # noqa: E402

n, folder = int(sys.argv[1]), Path(sys.argv[2])
parts = min(16, os.cpu_count() or 1)


def part(k):
    lo, hi = k * n // parts, (k + 1) * n // parts
    sub = folder / f".part{k}"
    for j, s in enumerate(make_images(sub, hi - lo, (500, 375), "jpeg", seed=k)):
        os.replace(s.path, folder / f"img_{lo + j:06d}.jpg")  # the names extract_pipeline.py looks for
    sub.rmdir()


t = time.perf_counter()
folder.mkdir(parents=True, exist_ok=True)
with Pool(parts) as pool:
    pool.map(part, range(parts))
files = sorted(folder.glob("img_*.jpg"))
print(f"{len(files)} JPEG files of 500x375, {sum(f.stat().st_size for f in files) / len(files) / 1e3:.0f} kB "
      f"each on average, in {time.perf_counter() - t:.1f} s with {parts} processes: {folder}")
EOF
}
export -f generate_images
rm -rf "$IMAGE_DIR"
step generate_images 90 generate_images

extract() {  # MODEL PRECISION
    python3 benchmarks/extract_pipeline.py --model "$1" --precision "$2" --device cuda --images "$IMAGES" \
        --image-size 500x375 --image-dir "$IMAGE_DIR" --batch-size 128 --repeats 3 --json "$OUT/extract_$1_$2.json"
}
export -f extract
step extract_RN50_fp32 90 extract RN50 fp32
step extract_ViT-B-32_fp32 90 extract ViT-B-32 fp32

# (c) TaskRes training at ImageNet 16-shot scale on the GPU, faithful fp32 products and bf16 products
step taskres_train_fp32 150 python3 benchmarks/taskres_train.py --device cuda --epochs 200 --plain-epochs 5 --products fp32
step taskres_train_bf16 150 python3 benchmarks/taskres_train.py --device cuda --epochs 200 --plain-epochs 5 --products bf16

# (d) the CPU test suite is not run here. (e) with the budget left: extraction with fp16 encoders, where the
# encoder is fastest and the pipeline most likely the bottleneck.
step extract_RN50_fp16 75 extract RN50 fp16
step extract_ViT-B-32_fp16 75 extract ViT-B-32 fp16
rm -rf "$IMAGE_DIR"

echo
echo "=== summary (exit codes; 124/137: timed out; logs and JSON in $OUT)"
{
    for i in "${!NAMES[@]}"; do
        printf '%-24s rc=%-5s %4s s\n' "${NAMES[$i]}" "${CODES[$i]}" "${TIMES[$i]}"
    done
    echo "total: ${SECONDS} s"
} | tee "$OUT/summary.txt"
