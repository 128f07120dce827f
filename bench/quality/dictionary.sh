#!/bin/sh
# Dictionary (MASA) vs per-layer truncated SVD at equal parameter counts on
# minilm-l6 and gpt-tiny; writes bench/results/dictionary.md.
# Release build by default; QUALITY_PROFILE=dev uses the (optimised) test
# profile instead, which gives the same numbers (no fast-math anywhere) when
# a release build is too slow to make. Needs SHARC_SHARED_DIR (or ../shared).
set -e
cd "$(dirname "$0")/../.."
if [ "${QUALITY_PROFILE:-release}" = dev ]; then profile=""; else profile="--release"; fi
cargo test $profile --test dictionary_quality -- --ignored --nocapture
