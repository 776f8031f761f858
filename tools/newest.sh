#!/usr/bin/env bash
# The canary: the newest release of every dependency, past the upper bounds setup.py declares, through the unit
# and integration tiers and one local-cloud e2e test (a two-node trial: every moto patch of the local cloud).
# It shows a maintainer the next release that breaks us before a user's fresh install does. CI keeps running
# the README's commands as written, within the bounds.
#
#   bash tools/newest.sh            # a venv in .venv-newest (made anew), then the tests; needs Docker for the e2e
#   E2E=0 bash tools/newest.sh      # without the e2e test
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-newest}
python=${PYTHON:-python3.11}

"$python" -m venv --clear "$venv"
venv=$(cd "$venv" && pwd)
"$venv/bin/pip" install -q -U pip
"$venv/bin/pip" install -q --no-deps -e . --config-settings editable_mode=compat
# Every requirement of the package and its test extra, by name and extras only: no version bounds.
"$venv/bin/python" - > "$venv/newest.txt" <<'PY'
import re
from importlib.metadata import requires

for requirement in requires("hydra-awsbatch-launcher") or []:
    spec, _, marker = requirement.partition(";")
    if marker.strip() and marker.strip().replace("'", '"') != 'extra == "test"':
        continue
    print(re.match(r"\s*([A-Za-z0-9._-]+(\[[^\]]*\])?)", spec)[1])
PY
echo "::: the newest releases of: $(tr '\n' ' ' < "$venv/newest.txt")"
# shellcheck disable=SC2046
"$venv/bin/pip" install -q -U --upgrade-strategy eager $(cat "$venv/newest.txt")
"$venv/bin/pip" list 2> /dev/null | grep -iE '^(hydra-core|moto|torch|botorch|gpytorch|boto3|omegaconf) ' || true

export PATH="$venv/bin:$PATH"  # as an activated venv: the tests run hydra-awsbatch as a user types it
"$venv/bin/python" -m pytest -q -m "unit or integration" -p no:cacheprovider
if [[ "${E2E:-1}" != 0 ]]; then
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_e2e.py -k test_a_two_node_trial_runs_in_two_containers
fi
echo "::: the newest releases pass; raise the bounds in setup.py (and _hooks.py's tested ranges) to them"
