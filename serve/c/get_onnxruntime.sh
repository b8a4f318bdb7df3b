#!/usr/bin/env bash
# Put onnxruntime's C API in DEST (default serve/c/build/onnxruntime), for example_onnx_inprocess.c:
#   DEST/include/onnxruntime_c_api.h   from Debian's libonnxruntime-dev
#   DEST/lib/libonnxruntime.so{,.1}    links to the shared library inside the onnxruntime wheel of PYTHON
#
#   bash serve/c/get_onnxruntime.sh [DEST] [PYTHON]        (PYTHON default .venv/bin/python)
#
# Why these two sources: the onnxruntime wheel carries libonnxruntime.so but no headers, and the
# headers ship in Debian's libonnxruntime-dev, which Debian 12 (bookworm) lacks and Debian 13 (trixie)
# has. Its .deb is fetched from trixie with a private apt configuration in a temporary directory:
# nothing is installed and the system's sources are not touched. The C API is stable across versions:
# headers of API version N work with any library of version >= 1.N (the example checks this at start).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-serve/c/build/onnxruntime}
PYTHON=${2:-.venv/bin/python}
SUITE=${DIFFAGENT_ORT_DEBIAN_SUITE:-trixie}

library=$("$PYTHON" -c "import onnxruntime, pathlib; capi = pathlib.Path(onnxruntime.__file__).parent / 'capi'; \
print(next(iter(sorted(capi.glob('libonnxruntime.so*'))), ''))")
if [ -z "$library" ]; then
    echo "get_onnxruntime.sh: the onnxruntime wheel of $PYTHON has no libonnxruntime.so (older wheels link it" \
         "into the Python module); upgrade it: $PYTHON -m pip install -U onnxruntime" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" \
    > "$work/sources.list"
apt_options=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root -qq)
if ! { apt-get "${apt_options[@]}" update && (cd "$work" && apt-get "${apt_options[@]}" download libonnxruntime-dev); }; then
    echo "get_onnxruntime.sh: could not download Debian $SUITE's libonnxruntime-dev (needs apt-get and Debian's" \
         "package archive); the in-process C example cannot be built without its headers" >&2
    exit 1
fi
dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$work/root"

rm -rf "$DEST"
mkdir -p "$DEST/include" "$DEST/lib"
cp "$work"/root/usr/include/onnxruntime/*.h "$DEST/include/"
library=$(realpath "$library")
ln -s "$library" "$DEST/lib/libonnxruntime.so.1"  # the library's soname: what the loader looks for
ln -s "$library" "$DEST/lib/libonnxruntime.so"    # what -lonnxruntime looks for
echo "onnxruntime C API in $DEST: headers from Debian $SUITE's $(basename "$work"/libonnxruntime-dev_*.deb)," \
     "library $library"
