#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs into one folder for a GPU machine
# that has an NVIDIA driver but neither Rust nor LLVM/MLIR 22 (and may not
# reach the network): a sharc built here with the CUDA runner (stripped, and
# xz-compressed when that makes it fit), the shared libraries it links that
# such a machine may lack, CUDA's libdevice, and the models with their
# reference data.
#
# Usage: scripts/gpu-bundle.sh DIR [MODEL...]   (default models: minilm-l6 gpt-tiny)
# Then, on the GPU machine: DIR/run.sh  (sets SHARC_BIN and SHARC_SHARED_DIR
# and runs scripts/gpu-check.sh from the checkout beside it).
#
# BUNDLE_TRIM_VOCAB=1 cuts each model's token-embedding tables down to the
# ids its reference inputs use (scripts/trim_vocab.py), for transfers with a
# size limit: minilm-l6's 30522-row table is half of its 90 MB. The outputs
# are unchanged (a Gather of the same rows); gpu-check.sh says which models
# were trimmed.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:?usage: scripts/gpu-bundle.sh DIR [MODEL...]}"
shift
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(minilm-l6 gpt-tiny)
SHARED="${SHARC_SHARED_DIR:-$(cd .. && pwd)/shared}"
export MLIR_SYS_220_PREFIX="${MLIR_SYS_220_PREFIX:-/usr/lib/llvm-22}"
export TABLEGEN_220_PREFIX="${TABLEGEN_220_PREFIX:-$MLIR_SYS_220_PREFIX}"

rm -rf "$DIR.part"
mkdir -p "$DIR.part/models" "$DIR.part/lib"

echo "== build (release, --features cuda)"
cargo build --release --quiet --features cuda --bin sharc
strip -o "$DIR.part/sharc" target/release/sharc
xz -T0 -6 "$DIR.part/sharc"

# The libraries sharc links besides glibc's: copied so the run can fall back
# on them when the GPU machine's system lacks one (run.sh checks with ldd).
ldd target/release/sharc | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux*) ;;
    *) cp -L "$lib" "$DIR.part/lib/" ;;
    esac
done

libdevice="${SHARC_LIBDEVICE:-${XDG_CACHE_HOME:-$HOME/.cache}/sharc/libdevice.10.bc}"
if [ -f "$libdevice" ]; then
    cp "$libdevice" "$DIR.part/libdevice.10.bc"
else
    echo "gpu-bundle: no libdevice.10.bc (run scripts/setup.sh): the GPU machine's CUDA toolkit must supply it" >&2
fi

for m in "${MODELS[@]}"; do
    if [ "${BUNDLE_TRIM_VOCAB:-0}" = 1 ]; then
        python3 scripts/trim_vocab.py "$SHARED/models/$m.onnx" "$SHARED/models/$m.data.safetensors" \
            "$DIR.part/models/$m.onnx" "$DIR.part/models/$m.data.safetensors"
    else
        cp "$SHARED/models/$m.onnx" "$SHARED/models/$m.data.safetensors" "$DIR.part/models/"
    fi
done

cat >"$DIR.part/run.sh" <<'EOF'
#!/usr/bin/env bash
# Runs scripts/gpu-check.sh with this bundle's sharc, libraries and models.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${TMPDIR:-/tmp}/sharc-gpu-check"
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$here/sharc.xz" "$bin"
chmod +x "$bin"
if ldd "$bin" | grep -q 'not found'; then
    echo "bundle: using the bundled libraries for: $(ldd "$bin" | grep 'not found' | awk '{print $1}' | tr '\n' ' ')"
    export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
[ -f "$here/libdevice.10.bc" ] && export SHARC_LIBDEVICE="${SHARC_LIBDEVICE:-$here/libdevice.10.bc}"
[ -f "$here/trimmed.txt" ] && sed 's/^/bundle: /' "$here/trimmed.txt"
export SHARC_BIN="$bin" SHARC_SHARED_DIR="$here"
exec "${GPU_CHECK:-$here/../scripts/gpu-check.sh}" "$@"
EOF
chmod +x "$DIR.part/run.sh"
if [ "${BUNDLE_TRIM_VOCAB:-0}" = 1 ]; then
    echo "models with token-embedding tables cut to the ids of their reference inputs (same outputs): ${MODELS[*]}" \
        >"$DIR.part/trimmed.txt"
fi
rm -rf "$DIR"
mv "$DIR.part" "$DIR"
du -sh "$DIR"/* | sed 's/^/    /'
echo "bundle: $(du -sh "$DIR" | cut -f1) in $DIR"
