#!/usr/bin/env bash
# Wheels of this project's pure-Python dependencies that the lent GPU machines lack
# (they have PyTorch, numpy, PyYAML, click and rich), for their CPython 3.12, into the
# ignored folder .whl/ that benchmarks/device/profile_gpu.sh installs from. Run here,
# where pip reaches the package index, from the repository root; versions are the ones
# this project is tested with.
set -euo pipefail
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing_extensions==4.16.0 gymnasium==1.4.0 Farama-Notifications==0.0.6
ls .whl
