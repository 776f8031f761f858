#!/usr/bin/env bash
# Entry point of the job image: a short diagnostic header, optional extra packages, then the worker
# (exec'd, so that SIGTERM from Batch or a Spot reclaim reaches it and the task can save a checkpoint).
# Arguments, when given, replace the worker: `docker run IMAGE python -c '...'` runs that instead.
set -euo pipefail

WORKER=(python -m hydra_plugins.hydra_awsbatch_launcher.worker)

echo "hydra-awsbatch job ${AWS_BATCH_JOB_ID:-(not on Batch)}" \
     "array index ${AWS_BATCH_JOB_ARRAY_INDEX:-none} attempt ${AWS_BATCH_JOB_ATTEMPT:-1}"
python - <<'PY' || true
import platform
try:
    import torch
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    torch_line = f"torch {torch.__version__}, GPUs: {', '.join(gpus) if gpus else 'none visible'}"
except ImportError:
    torch_line = "torch not installed"
print(f"python {platform.python_version()}, {torch_line}")
PY

if [[ -n "${EXTRA_PIP_PACKAGES:-}" ]]; then
    read -r -a packages <<< "${EXTRA_PIP_PACKAGES}"
    echo "installing EXTRA_PIP_PACKAGES: ${packages[*]}"
    python -m pip install --user --no-cache-dir "${packages[@]}"
fi

if [[ $# -eq 0 ]]; then
    set -- "${WORKER[@]}"
fi
if [[ "$*" == "${WORKER[*]}" && -z "${HYDRA_AWSBATCH_PAYLOAD_URI:-}" ]]; then
    echo "error: HYDRA_AWSBATCH_PAYLOAD_URI is not set. This image runs the jobs that" \
         "hydra/launcher=aws_batch submits; it is not meant to be started by hand." >&2
    exit 2
fi
exec "$@"
