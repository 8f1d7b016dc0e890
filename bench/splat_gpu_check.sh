#!/usr/bin/env bash
# The GPU checks of the splat trainer's device path (issue 14), for a lent CUDA machine, in about 5 minutes:
#   1. tests/splat/test_splat_device.py with a GPU (CPU steps = CUDA steps; the sharded trainer on an NCCL group of
#      one = the one-process CUDA trainer; checkpoints CPU <-> CUDA, safetensors and torch.distributed.checkpoint;
#      `manyview splat --device cuda --resume` continuing a run two gloo processes began);
#   2. bench/splat_distributed.py --mode gpu: the NCCL path at world size 1 against the one-device gsplat path
#      (and the one-device reference renderer): equal images, time ratios;
#   3. tests/splat/test_splat_gsplat.py, when gsplat's kernels built.
# gsplat (PyPI's wheel) compiles its CUDA kernels on first use: that build runs in the background from the start,
# for this GPU's architecture only, and whatever does not finish in time is reported and left out.
#
# Here, once (downloads the pure-Python wheels the GPU machine's image lacks into .whl/, which git ignores):
#     bash bench/splat_gpu_check.sh --fetch-wheels
# There, from the repository root (the device tool: carry [".whl"], timeout_s 480):
#     bash bench/splat_gpu_check.sh
# Writes into $OUT (else bench/results/): splat_gpu_check.log, gsplat_build.log, splat_distributed_gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 plyfile==1.1.5 gsplat==1.5.3)
if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

out=${OUT:-bench/results}
mkdir -p "$out"
log="$out/splat_gpu_check.log"
exec > >(tee "$log") 2>&1
start=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - start )) s] $*"; }

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MANYVIEW_QUIET=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/splat_site \
        .whl/*.whl && export PYTHONPATH="/tmp/splat_site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.is_available())"

# gsplat's kernels: built in the background while the tests run (they use the reference renderer only)
TORCH_CUDA_ARCH_LIST=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST MAX_JOBS=12
( timeout 210 python3 -c "from gsplat.cuda._backend import _C; assert _C is not None" \
    > "$out/gsplat_build.log" 2>&1; echo "exit $?" >> "$out/gsplat_build.log" ) &
build=$!

elapsed "gpu tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/splat/test_splat_device.py
tests=$?
elapsed "gpu tests: exit $tests; waiting for gsplat's build"
wait $build
gsplat_flag=()
if tail -n 1 "$out/gsplat_build.log" | grep -qx "exit 0"; then
    elapsed "gsplat built"
else
    elapsed "gsplat did not build (see gsplat_build.log); the benchmark leaves it out"
    tail -n 5 "$out/gsplat_build.log"
    gsplat_flag=(--no-gsplat)
fi

timeout 150 python3 bench/splat_distributed.py --mode gpu "${gsplat_flag[@]}" --out "$out/splat_distributed_gpu.json"
bench=$?
elapsed "benchmark: exit $bench"

gsplat_tests=skipped
if [ ${#gsplat_flag[@]} -eq 0 ]; then
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/splat/test_splat_gsplat.py
    gsplat_tests=$?
fi
elapsed "done: gpu tests exit $tests, benchmark exit $bench, gsplat tests $gsplat_tests"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
