#!/usr/bin/env bash
# The GPU path, checked on a lent machine with an NVIDIA GPU where PyTorch is installed and nothing
# can be downloaded (issue 17). Stages, each under its own time limit, about 8 minutes in all:
#   1. install: a virtual environment over the image's packages, with the wheels it lacks (from
#      .gpu/wheels) and pyro_vae itself (editable, as `make install` does here);
#   2. gpu tests: every test marked `gpu` (skipped on machines without CUDA): fit, scoring and
#      kill-and-resume equality (the CUDA random state saved) on cuda;
#   3. bench_train on cuda: pyro_vae.fit against the hand-written PyTorch step;
#   4. bench_score on cuda: K = 5000 on the 10,000 MNIST test images, with its roofline;
#   5. the rest of the suite on the image's PyTorch (with pytest-xdist where it is there).
# Logs go to $OUT (or runs/gpu_check); a table of the stages and the benchmarks' summary lines is
# printed last.
#
# Prepare here, where ../shared is:  make gpu-prepare            (fills .gpu/: wheels and MNIST)
# Run there (the device tool):       command "bash experiments/gpu_check.sh", carry [".gpu"]
# Try it here, as far as a CPU goes: GPU_CHECK_DEVICE=cpu GPU_CHECK_PYTHON=.venv/bin/python \
#                                    bash experiments/gpu_check.sh --quick
set -u
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-cuda}
data=${GPU_CHECK_DATA:-.gpu/data}
out=${OUT:-runs/gpu_check}
quick=0
[ "${1:-}" = "--quick" ] && quick=1
mkdir -p "$out"
table=()

stage() {  # stage NAME LIMIT COMMAND...: run COMMAND under LIMIT seconds, log it, keep a table row
    local name=$1 limit=$2 started rc
    shift 2
    started=$(date +%s)
    echo "== $name ($limit s at most): $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    tail -n 15 "$out/$name.log"
    table+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$(($(date +%s) - started))" \
        "$(grep '^summary:' "$out/$name.log" | tail -n 1 | cut -c1-400)")")
    return "$rc"
}

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    python=$GPU_CHECK_PYTHON
else
    python=/tmp/gpu-check-venv/bin/python
    stage install 60 bash -c "python3 -m venv --system-site-packages /tmp/gpu-check-venv &&
        $python -m pip install -q --no-index --no-deps --no-build-isolation .gpu/wheels/*.whl -e ." || {
        printf '%s\n' "${table[@]}"
        exit 1
    }
fi
stage environment 30 "$python" -c "import torch, pyro, pyro_vae
print('torch', torch.__version__, 'pyro', pyro.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
cat "$out/environment.log"

threads=$(($(nproc) < 8 ? $(nproc) : 8))
if [ "$quick" = 1 ]; then
    train_sizes=(--batch-sizes 32 --steps 3 --rounds 1)
    score_sizes=(--train-size 500 --epochs 1 --test-size 20 --num-samples 200 --loop-particles 5)
    suite=(--collect-only -q)
else
    train_sizes=(--batch-sizes 128,512 --rounds 7)
    score_sizes=()
    suite=(-q -x -m "not gpu")
    "$python" -c "import xdist" 2>/dev/null && suite+=(-n "$threads")
fi
stage gpu-tests 120 "$python" -m pytest -q -m gpu -p no:cacheprovider -rs
stage bench-train 90 "$python" experiments/bench_train.py --device "$device" --data-dir "$data/mnist" \
    --threads "$threads" --out "$out/bench-train" "${train_sizes[@]}"
stage bench-score 90 "$python" experiments/bench_score.py --device "$device" --data-dir "$data/mnist" \
    --threads "$threads" --out "$out/bench-score" "${score_sizes[@]}"
stage suite 90 "$python" -m pytest -p no:cacheprovider "${suite[@]}"

echo
echo "gpu_check on $device, $(date -u +%Y-%m-%dT%H:%MZ):"
printf '%s\n' "${table[@]}"
