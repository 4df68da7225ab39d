#!/usr/bin/env bash
# Sets up pdl-ext from nothing: a virtual environment in .venv, torch, the test/demo dependencies,
# and the C++ extension (CPU kernels; CUDA ones too on a GPU machine or with FORCE_CUDA=1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# torch 2.14.1 is the CUDA 13 build Linux users get from PyPI (it runs on the CPU too).
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" numpy ninja pybind11
# POT: the peer oracle of the op's tests (tests/test_pot_oracle.py) and a row of `pdl-ext bench`.
.venv/bin/python -m pip install -q safetensors tqdm scikit-image Pillow matplotlib \
    pytest pytest-benchmark scipy hypothesis pot
.venv/bin/python -m pip install -q --no-build-isolation -e .
.venv/bin/python -c "import pdl_ext, json; print(json.dumps(pdl_ext.extension_info()))"
