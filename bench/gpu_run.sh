#!/usr/bin/env bash
# Issue 18's GPU checks and figures on a lent GPU machine, in one command (about 5 minutes on an
# H100). Builds nothing: the project and its dependencies are installed under DIR beforehand
# (`pip install --target DIR .` with the wheels; faiss not needed).
#
#   bench/gpu_run.sh --target DIR [bench/clip_gpu.py options, e.g. --images 20000]
#
# 1. what the machine is (GPU, torch, torchvision);
# 2. the CUDA tests of the scoring stage's preparation (GPU- vs CPU-prepared embeddings of the
#    real photos), when pytest is installed under DIR;
# 3. bench/clip_gpu.py: towers, preparation (CPU and GPU paths), the whole stage, stage over towers,
#    into bench/results/clip_gpu.json.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=$2; shift 2 ;;
    --target=*) target=${1#--target=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$target" ] || [ ! -d "$target/crawl2clip" ]; then
  echo "usage: $0 --target DIR [clip_gpu.py options]   (DIR: where crawl2clip and its wheels are installed)" >&2
  exit 2
fi
python=${PYTHON:-python3}
# DIR before the checkout: the repository's own crawl2clip/ folder must not hide the installed package.
export PYTHONPATH="$target:$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -P -c "import torch, torchvision; assert torch.cuda.is_available(), 'no CUDA device';
print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(),
      torch.cuda.device_count(), 'device(s)')"
"$python" -P -c "import crawl2clip, crawl2clip.models.clip as clip; print('crawl2clip from', crawl2clip.__path__, clip.__file__)"
if "$python" -P -c "import pytest" 2>/dev/null; then
  # A failing check is reported, and the figures are still measured.
  "$python" -P -m pytest tests/test_score_preparation.py tests/test_models_clip.py -q -p no:cacheprovider \
    --import-mode=importlib -o pythonpath= -k "gpu or device" -rs || echo "the CUDA tests failed (above)"
else
  echo "pytest is not installed under $target: the CUDA tests are skipped"
fi
"$python" -P bench/clip_gpu.py "${args[@]}"
