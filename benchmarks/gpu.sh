#!/usr/bin/env bash
# The GPU benchmarks (scale.py, compression.py on the French model), for a machine whose Python already has
# CUDA torch but no network (the `device` machines of this workplace: torch 2.11, transformers 5.17).
#
#   bash benchmarks/gpu.sh prepare   # here: wheels we pin that the GPU image lacks -> .whl/, the French
#                                    # model in bf16 (fits the 64 MiB transfer) and the corpus gzipped -> .bench/
#   bash benchmarks/gpu.sh run       # there: installs .whl/ into /tmp/site, runs both, copies results to $OUT
#   bash benchmarks/gpu.sh demo      # there: the whole `llm4all demo` on the GPU (bf16 on by default), run twice,
#                                    # then cache-teacher + kd from the cache; logs and metrics to $OUT
#   bash benchmarks/gpu.sh check     # there: demo, then scale.py
#   bash benchmarks/gpu.sh real      # there: a real config at full size, random weights (Qwen2.5-1.5B by default,
#                                    # REAL_FOLDER=<recipes folder>): compress 40 % + feature-distill + 50 kd + 50 sft
#                                    # steps through the folder's recipes; tokens/s, MFU, peak memory vs `llm4all estimate`
#
# Needs outputs/bench/french-small and benchmarks/data/french (benchmarks/README.md says how to build them).
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
    set -e
    mkdir -p .whl .bench
    # our pinned versions of what the GPU image lacks or has in another version (constraints.txt)
    pins=$(grep -iE '^(transformers|trl|datasets|dill|multiprocess|peft|nltk)==' constraints.txt)
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
    .venv/bin/python -m pip wheel -q --no-deps -w .whl "$(grep -i '^rouge_score==' constraints.txt)"  # sdist only
    HF_HUB_OFFLINE=1 .venv/bin/python - <<'PY'
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src, dst = "outputs/bench/french-small", "outputs/bench/french-small-bf16"
AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(dst)
AutoTokenizer.from_pretrained(src).save_pretrained(dst)
PY
    for split in train eval; do gzip -c "benchmarks/data/french/$split.jsonl" > ".bench/french-$split.jsonl.gz"; done
    du -sh .whl .bench outputs/bench/french-small-bf16
}

setup() {
    OUT=${OUT:-/tmp/gpu-bench}
    mkdir -p "$OUT"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    python3 -c "import torch, transformers, importlib.metadata as m; print('torch', torch.__version__, 'transformers', transformers.__version__,
        *(f'{n} {m.version(n)}' for n in ('trl', 'datasets', 'peft', 'accelerate', 'pyarrow', 'huggingface_hub')),
        torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 1
    [ "${ALLOW_CPU:-0}" = 1 ] || python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU'" || exit 1
}

quiet() {  # progress bars to one line each, without the intermediate refreshes
    tr '\r' '\n' | grep -vE "(it/s|s/it|examples/s)\]$"
}

demo() {
    setup
    demo_steps
}

demo_steps() {
    start=$(date +%s)
    timeout "${DEMO_SECONDS:-260}" python3 -m llm4all_recipes demo 2>&1 | quiet > "$OUT/demo.log"
    echo "demo: rc ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"; tail -40 "$OUT/demo.log"
    start=$(date +%s)
    timeout 60 python3 -m llm4all_recipes demo 2>&1 | quiet > "$OUT/demo-again.log"
    echo "second demo: rc ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
    for step in "cache-teacher recipes/tiny-llama/cache-teacher/base.yaml" "kd recipes/tiny-llama/kd/heal-cached.yaml"; do
        set -- $step
        start=$(date +%s)
        timeout 60 python3 -m llm4all_recipes "$1" --config "$2" 2>&1 | quiet > "$OUT/$1.log"
        echo "$1 --config $2: rc ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"; tail -5 "$OUT/$1.log"
    done
    find outputs hub -name metrics.json -o -name README.md -path "hub/*" | tar czf "$OUT/outputs.tgz" -T - 2>/dev/null
}

scale() {
    timeout "${SCALE_SECONDS:-200}" python3 benchmarks/scale.py ${SCALE_ARGS:---layers 2} --write-docs 2>&1 | quiet | tee "$OUT/scale.log"
    cp benchmarks/results/scale-*.json "$OUT/"
}

compression() {
    mkdir -p benchmarks/data/french
    for split in train eval; do gunzip -c ".bench/french-$split.jsonl.gz" > "benchmarks/data/french/$split.jsonl"; done
    timeout "${COMPRESSION_SECONDS:-280}" python3 benchmarks/compression.py \
        --model outputs/bench/french-small-bf16 --text benchmarks/data/french/train.jsonl \
        --eval benchmarks/data/french/eval.jsonl --name french-small-22m --samples 64 --fd-tokens 65536 \
        --eval-docs 30 --write-docs ${COMPRESSION_ARGS:-} 2>&1 | quiet | tee "$OUT/compression.log"
    cp benchmarks/results/compression-french-*.json "$OUT/"
}

run() {  # the two benchmarks
    setup
    scale
    compression
    cp docs/BENCHMARKS.md "$OUT/"
}

check() {  # the demo, then the scale benchmark
    setup
    demo_steps
    scale
    cp docs/BENCHMARKS.md "$OUT/"
}

real() {  # benchmarks/real_config.py, sized for a 15-minute lease (~6 min on an H200 for Qwen2.5-1.5B)
    setup
    [ -f outputs/tiny-llama/tiny-model/base/config.json ] ||
        timeout 120 python3 -m llm4all_recipes tiny-model 2>&1 | quiet > "$OUT/tiny-model.log"  # the tokenizer
    timeout "${REAL_SECONDS:-480}" python3 benchmarks/real_config.py --folder "${REAL_FOLDER:-qwen2.5-1.5b-instruct}" \
        --gpu h200 --write-docs 2>&1 | quiet | tee "$OUT/real.log"
    cp benchmarks/results/real-*.json docs/BENCHMARKS.md "$OUT/"
}

"${1:?usage: bash benchmarks/gpu.sh prepare|run|demo|check|real}"
