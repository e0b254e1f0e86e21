#!/usr/bin/env bash
# Packages cpt needs that the lent GPU machine's image lacks (it has torch, Lightning, transformers,
# tokenizers, numpy, pyarrow, ...; it reaches no package index), packed here as one archive that
# travels with the working tree: .gpu-bundle/site.tar.xz (git-ignored). benchmarks/gpu.sh unpacks it
# there when `import ray` fails. Versions are the ones this checkout's .venv runs (what CI tests);
# the device's Python is 3.12 (PYVER to change it: 3.11 rehearses the bundle on this machine).
# Ray's wheel alone is ~80 MB, over the 64 MiB a device call may carry, so its parts no run of cpt
# imports (Java jars, RLlib, Serve, LLM, the dashboard's web client) are left out and the rest is
# xz-compressed (~25 MB).
#
#   bash benchmarks/gpu_bundle.sh     # then: device run with carry [".gpu-bundle"], bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
PKGS=(ray sqlalchemy alembic mako pydantic pydantic-core annotated-types typing-inspection zstandard
      jsonschema jsonschema-specifications referencing rpds-py)
out=.gpu-bundle
rm -rf "$out"
mkdir -p "$out/wheels" "$out/site"
specs=()
for p in "${PKGS[@]}"; do
  specs+=("$p==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$p'))")")
done
plats=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plats+=(--platform "$p")
done
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${plats[@]}" -d "$out/wheels" "${specs[@]}"
for w in "$out"/wheels/*.whl; do
  unzip -q -o "$w" -d "$out/site"
done
rm -rf "$out"/site/ray/{jars,rllib,serve,llm,dashboard/client/build}
tar -C "$out/site" -cf - . | xz -9 -T0 > "$out/site.tar.xz"
rm -rf "$out/wheels" "$out/site"
echo "$out/site.tar.xz: $(du -h "$out/site.tar.xz" | cut -f1) (${specs[*]}; python $PYVER)"
