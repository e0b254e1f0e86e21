#!/usr/bin/env bash
# GPU benchmark (one prepared script, under 8 minutes): cpt DDP and FSDP vs a bare DDP loop, ~125M and ~1B
# Llama-style models, bf16, all GPUs of this machine. Python: $CPT_PYTHON, else .venv if present, else
# python3 (torch must have CUDA). Packages it lacks come from .gpu-bundle (benchmarks/gpu_bundle.sh).
# `bash benchmarks/gpu.sh --cpu-smoke` rehearses the whole path on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${CPT_PYTHON:-python3}
[ -z "${CPT_PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "import ray, sqlalchemy, alembic, pydantic" 2>/dev/null; then
  if [ ! -f .gpu-bundle/site.tar.xz ]; then
    echo "gpu.sh: $PY lacks cpt's packages and there is no .gpu-bundle/site.tar.xz" \
         "(run benchmarks/gpu_bundle.sh where pip works, and carry .gpu-bundle)" >&2
    exit 2
  fi
  mkdir -p /tmp/cpt-site
  tar -C /tmp/cpt-site -xJf .gpu-bundle/site.tar.xz
  export PYTHONPATH=/tmp/cpt-site${PYTHONPATH:+:$PYTHONPATH}
  echo "gpu.sh: packages from .gpu-bundle unpacked to /tmp/cpt-site"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [[ " $* " != *" --cpu-smoke "* ]]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch without CUDA'; print('torch', torch.__version__)"
fi
exec "$PY" benchmarks/gpu.py "$@"
