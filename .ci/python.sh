# Sourced by the CI stages: ROOT (the checkout) and PYTHON (PDL_PYTHON, else .venv/bin/python when
# present, else python3). Not $PYTHON from the caller: .ci/setup.sh reads that as the base interpreter.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PDL_PYTHON:-}" ]]; then
  PYTHON="$PDL_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PYTHON="$ROOT/.venv/bin/python"
else
  PYTHON=python3
fi
