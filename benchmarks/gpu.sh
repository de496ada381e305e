#!/usr/bin/env bash
# The GPU benchmarks (scale.py, compression.py on the French model), for a machine whose Python already has
# CUDA torch but no network (the `device` machines of this workplace: torch 2.11, transformers 5.17).
#
#   bash benchmarks/gpu.sh prepare   # here: wheels we pin that the GPU image lacks -> .whl/, the French
#                                    # model in bf16 (fits the 64 MiB transfer) and the corpus gzipped -> .bench/
#   bash benchmarks/gpu.sh run       # there: installs .whl/ into /tmp/site, runs both, copies results to $OUT
#
# Needs outputs/bench/french-small and benchmarks/data/french (benchmarks/README.md says how to build them).
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
    set -e
    mkdir -p .whl .bench
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl "transformers==$(.venv/bin/python -c 'import transformers; print(transformers.__version__)')"
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

run() {
    OUT=${OUT:-/tmp/gpu-bench}
    mkdir -p "$OUT" benchmarks/data/french
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
        torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 1
    [ "${ALLOW_CPU:-0}" = 1 ] || python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU'" || exit 1
    for split in train eval; do gunzip -c ".bench/french-$split.jsonl.gz" > "benchmarks/data/french/$split.jsonl"; done
    timeout "${SCALE_SECONDS:-200}" python3 benchmarks/scale.py ${SCALE_ARGS:---layers 2} 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tee "$OUT/scale.log"
    TQDM_DISABLE=1 timeout "${COMPRESSION_SECONDS:-280}" python3 benchmarks/compression.py \
        --model outputs/bench/french-small-bf16 --text benchmarks/data/french/train.jsonl \
        --eval benchmarks/data/french/eval.jsonl --name french-small-22m --samples 64 --fd-tokens 65536 \
        --eval-docs 30 ${COMPRESSION_ARGS:-} 2>&1 | tee "$OUT/compression.log"
    cp docs/BENCHMARKS.md "$OUT/"
    cp benchmarks/results/scale-*.json benchmarks/results/compression-french-*.json "$OUT/" 2>/dev/null
    ls -la "$OUT"
}

"${1:?usage: bash benchmarks/gpu.sh prepare|run}"
