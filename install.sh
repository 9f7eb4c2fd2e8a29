#!/usr/bin/env bash
# Install aero-compile and its dependencies on a fresh machine (the README's first step).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# The pinned CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
"$PYTHON" -m pip install --quiet torch==2.13.0
# SecretFlow SPU (the --engine spu backend; brings jax/jaxlib 0.4.34 and numpy 1.26, which torch, onnxruntime
# and CrypTen accept).
"$PYTHON" -m pip install --quiet spu==0.9.5
"$PYTHON" -m pip install --quiet -e ".[dev]"
# CrypTen 0.4.1 declares the dead 'sklearn' stub and torchvision (which drags in another torch):
# install it without deps, plus its real runtime deps. Do not run `pip check` afterwards.
"$PYTHON" -m pip install --quiet numpy pyyaml omegaconf onnx
"$PYTHON" -m pip install --quiet --no-deps crypten==0.4.1
# onnx2torch (a test converts our ONNX files with it) declares torchvision, which drags in another torch:
# install it without deps; it imports torchvision only for its NMS/RoIAlign converters, which the test stubs.
"$PYTHON" -m pip install --quiet --no-deps onnx2torch==1.5.15
