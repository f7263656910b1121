#!/usr/bin/env bash
# Wheels that bench/run_gpu.sh installs on the GPU machine, which reaches no network: the versions this project is
# built and tested with (constraints.txt), where the machine's image holds others (it has torch 2.11 + CUDA,
# transformers 5.17, huggingface_hub 1.33 (transformers 5.23 needs >= 1.31), accelerate, safetensors, tokenizers; see /work/.library/device/KINDS.md). Pure-Python wheels
# except regex (CPython 3.12, manylinux x86-64: the machine's python3).
#   bash bench/make_wheels.sh            -> bench/.whl/*.whl (git-ignored; carried with `carry: ["bench/.whl"]`)
set -euo pipefail
cd "$(dirname "$0")"
rm -rf .whl && mkdir -p .whl
PY=${PYTHON:-python3}
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    transformers==5.23.0 peft==0.21.2 regex==2026.11.15
ls -la .whl
du -sh .whl
