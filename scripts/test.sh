#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages, rustup components), then
# checks formatting, runs clippy with warnings as errors, and runs every test.
#
#   ./scripts/test.sh            everything (the whole suite on the defaults; the core subset,
#                                tests/modes.rs, under every mode)
#   ./scripts/test.sh -- NAME    cargo test filter passed through
#   ./scripts/test.sh --matrix   also the whole end-to-end suite (crates/lair/tests) under every
#                                combination of modes, each test over every backend
#
# A test that cannot run (not root, no kernel feature) says why; the list is printed at the
# end, and as root (CI) a skipped test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
matrix=0
if [ "${1:-}" = "--matrix" ]; then
  matrix=1
  shift
fi
# Every combination of the mode settings beyond the defaults (one line each; the defaults
# are the plain run). A new mode setting or value adds its lines here and to
# crates/lair/tests/support/mod.rs MODES.
combos=(
  "--ecem dns"
  "--data copy"
  "--data copy --ecem ded"
  "--data splice"
  "--data splice --ecem dns"
  "--data share"
  "--data share --ecem dns"
  "--data move"
  "--data emulated"
  "--data emulated --ecem ded"
  "--model threads"
  "--model threads --data copy"
  "--model threads --data copy --ecem ded"
  "--model threads --data splice"
  "--model threads --data share"
  "--model threads --data move"
  "--model threads --data emulated"
)
# The end-to-end suites that start servers through tests/support (the lab's tests start
# theirs from experiment files, which set their own modes).
e2e=(--test serve --test hostile --test regression --test security --test syscalls
  --test uring_fallback --test load --test modes --test datapath)

# Commands the integration tests run, and the Debian package that has each.
declare -A pkg_of=(
  [curl]=curl            # a real client against the binary
  [setpriv]=util-linux   # run the server as nobody for the 403 test when we are root
  [prlimit]=util-linux   # a tiny descriptor limit for the EMFILE test
  [kill]=procps          # SIGTERM for graceful shutdown tests
  [id]=coreutils
  [dd]=coreutils         # drop a file from the page cache (iflag=nocache)
  [fincore]=util-linux   # check that it was dropped
  [nginx]=nginx-light    # the lab's peers (lair lab run … --quick)
  [lighttpd]=lighttpd
  [taskset]=util-linux   # the lab pins servers to a CPU
  [ip]=iproute2          # the lab's slow-client namespaces
  [losetup]=util-linux   # the lab's emulated disk: a loop device…
  [mkfs.ext4]=e2fsprogs  # …holding an ext4 image
  [strace]=strace        # counts the hit path's system calls (tests/syscalls.rs)
)
missing=()
for cmd in "${!pkg_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "test.sh: installing ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The measurement build (valgrind's epoll and open) is code that only this feature compiles.
echo "test.sh: cargo clippy --features valgrind"
cargo clippy -p lair --features valgrind --locked --target-dir target/valgrind -- -D warnings
echo "test.sh: cargo test"
# Tests that cannot run here record why (crates/lair/tests/support/skip.rs); they are listed
# at the end, and as root — CI — any skip is a failure: there, every test must run.
skips=$(mktemp /tmp/lair-test-skips.XXXXXX)
trap 'rm -f "$skips"' EXIT
LAIR_TEST_SKIPS=$skips cargo test --workspace --locked "${@}"
if [ "$matrix" -eq 1 ]; then
  for m in "${combos[@]}"; do
    echo "test.sh: the end-to-end suite under: $m"
    LAIR_TEST_SKIPS=$skips LAIR_TEST_MODE="$m" cargo test -p lair --locked --no-fail-fast \
      "${e2e[@]}" "${@}"
  done
  echo "test.sh: matrix: the defaults and ${#combos[@]} mode combination(s), each end-to-end test over every backend"
fi
if [ -s "$skips" ]; then
  echo "test.sh: tests that did not run here:"
  sed 's/^/  skipped: /' "$skips"
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: running as root, where every test must run: failing" >&2
    exit 1
  fi
fi
