#!/usr/bin/env bash
# Every GPU figure of issue 10 (ours vs the LLaVA-style peer at real shapes, random bf16 weights) in one command, on
# the lent H100, which reaches no network. Here, once:   bash bench/make_wheels.sh     (-> bench/.whl, git-ignored)
# Then with the device tool:  run(command="bash bench/run_gpu.sh", carry=["bench/.whl"], timeout_s=600)
# It writes $OUT/gpu_h100.json (bench/results/gpu_h100.json when OUT is unset); copy it to bench/results/.
# Budget: about 3-5 minutes on an H100 (7B built once in bf16 on the GPU, shared by both systems); hard limit 540 s.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ls bench/.whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        bench/.whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "bench/.whl is empty: run bench/make_wheels.sh here and carry bench/.whl (using the machine's own packages)"
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'gpu', torch.cuda.get_device_name(0))"
timeout 540 python3 -m bench.gpu --out "$OUT/gpu_h100.json" "$@" 2>&1 | tee "$OUT/gpu_h100.log"
