#!/bin/sh
# Builds benchmarks/onednn_direct.cpp against oneDNN 3.2 from PyPI (Intel's onednn-cpu-gomp and
# onednn-devel-cpu-gomp wheels, unpacked into a cache folder) and runs it with the arguments given,
# by default the dense yolov3-416 beside its 75 % compacted widths, oneDNN's own split, 5 rounds.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${ONEDNN_DIRECT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prunekit-onednn-direct}
version=2023.2.0
if [ ! -f "$cache/include/dnnl.hpp" ]; then
    mkdir -p "$cache/wheels"
    python3 -m pip download --quiet --no-deps -d "$cache/wheels" \
        "onednn-cpu-gomp==$version" "onednn-devel-cpu-gomp==$version"
    for wheel in "$cache"/wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$cache/unpacked"
    done
    mkdir -p "$cache/include" "$cache/lib"
    cp -r "$cache"/unpacked/*.data/data/include/. "$cache/include/"
    cp "$cache"/unpacked/*.data/data/lib/libdnnl.so.3 "$cache/lib/"
    ln -sf libdnnl.so.3 "$cache/lib/libdnnl.so"
fi
g++ -O2 -std=c++17 -fopenmp -I"$cache/include" "$here/onednn_direct.cpp" -L"$cache/lib" -ldnnl \
    -Wl,-rpath,"$cache/lib" -o "$cache/onednn_direct"
if [ $# -eq 0 ]; then set -- 5 1 0 0 0.25 0 0; fi
exec "$cache/onednn_direct" "$@"
