#!/bin/sh
# Expert reuse vs dropping the least-used experts at equal parameter counts
# on moe-tiny; writes bench/results/expert_reuse.md.
# Release build by default; QUALITY_PROFILE=dev uses the (optimised) test
# profile instead, which gives the same numbers (no fast-math anywhere) when
# a release build is too slow to make. Needs SHARC_SHARED_DIR (or ../shared).
set -e
cd "$(dirname "$0")/../.."
if [ "${QUALITY_PROFILE:-release}" = dev ]; then profile=""; else profile="--release"; fi
cargo test $profile --test expert_reuse_quality -- --ignored --nocapture
