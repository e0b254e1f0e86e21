#!/usr/bin/env bash
# GPU benchmark (one prepared script, under 8 minutes): cpt DDP and FSDP vs a bare DDP loop, ~125M and ~1B
# Llama-style models, bf16, all GPUs of this machine. Uses .venv if present (torch must have CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch without CUDA'; print('torch', torch.__version__)"
exec "$PY" benchmarks/gpu.py "$@"
