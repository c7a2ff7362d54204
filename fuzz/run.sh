#!/usr/bin/env bash
# Run every fuzz target (or the ones named) for a bounded time, starting from the committed
# corpora in fuzz/corpus/. Exits non-zero if any target finds a crash, panic, leak, OOM or
# timeout; the reproducer is left in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                                    # CI: 20 s per target
#   FUZZ_SECONDS=1800 fuzz/run.sh dialect_stream   # a longer run of one target
#   FUZZ_SANITIZER=none fuzz/run.sh                # without AddressSanitizer
#
# New inputs found go to fuzz/target/corpus-work/<target>/ (kept between local runs, never
# committed); to keep a good one, copy it into fuzz/corpus/<target>/.
# See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
MALLOC_LIMIT_MB="${FUZZ_MALLOC_LIMIT_MB:-512}"
MAX_LEN="${FUZZ_MAX_LEN:-16384}"
# AddressSanitizer by default: it enforces -malloc_limit_mb (a single huge allocation fails
# the run at once); FUZZ_SANITIZER=none builds without it.
SANITIZER="${FUZZ_SANITIZER:-address}"
CARGO_FUZZ_VERSION=0.13.2

# cargo-fuzz passes -Z flags (sanitizer, coverage); stable rustc accepts them with this.
export RUSTC_BOOTSTRAP=1
# Instrumented builds stay out of the main target dir (different flags would thrash it).
export CARGO_TARGET_DIR="$PWD/target"
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# The same build flags for `build` and `run`, so `run` does not rebuild.
BUILD_FLAGS=(--codegen-units 16 -s "$SANITIZER")

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
if [ "$#" -gt 0 ]; then
    for t in "${targets[@]}"; do cargo fuzz build "${BUILD_FLAGS[@]}" "$t"; done
else
    cargo fuzz build "${BUILD_FLAGS[@]}"
fi
echo "fuzz: built ${#targets[@]} targets in $(( $(date +%s) - start ))s"

failed=()
for t in "${targets[@]}"; do
    work="target/corpus-work/$t"
    log="target/logs/$t.log"
    mkdir -p "$work" "corpus/$t" "artifacts/$t" "$(dirname "$log")"
    # The first corpus dir receives new inputs; the committed one is only read.
    if cargo fuzz run "${BUILD_FLAGS[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" \
        -rss_limit_mb="$RSS_LIMIT_MB" \
        -malloc_limit_mb="$MALLOC_LIMIT_MB" \
        -max_len="$MAX_LEN" \
        -timeout=10 \
        -dict=dicts/loopgate.dict \
        -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
        echo "fuzz: $t ok (${runs:-?} runs, ${cov:-cov: ?}, ${SECONDS_PER_TARGET}s)"
    else
        echo "fuzz: $t FAILED; last lines of $log:"
        tail -n 60 "$log"
        echo "fuzz: reproduce with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${BUILD_FLAGS[*]} $t artifacts/$t/<file>)"
        failed+=("$t")
    fi
done

echo "fuzz: total $(( $(date +%s) - start ))s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#targets[@]} passed, 0 failed"
