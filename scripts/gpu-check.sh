#!/usr/bin/env bash
# Kiln's GPU checks in one device call (../shared/gpu/README.md): install the carried wheels
# (pycuda and what it needs, NVRTC's binding, crt headers) from .whl/ into /tmp/site, then run the
# GPU tests and the GPU benchmarks, writing every log under "$OUT" (default: ./gpu-check-out).
#
#   echo /.whl/ >> .git/info/exclude && mkdir -p .whl && cp ../shared/gpu/wheels/*.whl .whl/
#   run(command="bash scripts/gpu-check.sh", carry=[".whl"])
#
# The machine has no network: nothing else is installed. Exit status: that of pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"

{
  echo "## machine"; nvidia-smi || true
  "$PYTHON" --version
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} >"$OUT/machine.log" 2>&1

if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "no wheels in .whl/: copy ../shared/gpu/wheels/*.whl there and carry .whl" | tee "$OUT/install.log"
  exit 2
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD"
export KILN_CACHE_DIR="${KILN_CACHE_DIR:-/tmp/kiln-cache}"
"$PYTHON" -c 'import runtime.cuda as c; print(c.cuda_unavailable() or "CUDA ready")' >>"$OUT/install.log" 2>&1

# The GPU tests first: they say whether the numbers below mean anything.
"$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests >"$OUT/pytest-gpu.log" 2>&1
status=$?
tail -n 30 "$OUT/pytest-gpu.log"

# Benchmarks: time-boxed, so a slow naive kernel cannot eat the call.
timeout 240 "$PYTHON" benchmarks/gemm_cuda.py --runs 10 >"$OUT/gemm_cuda.md" 2>&1
timeout 240 "$PYTHON" benchmarks/models_cuda.py --layers 1 --runs 10 --model-tests >"$OUT/models_cuda.md" 2>&1
tail -n 20 "$OUT/gemm_cuda.md" "$OUT/models_cuda.md"
exit $status
