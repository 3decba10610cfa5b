#!/usr/bin/env bash
# Builds every plugin in this directory from source into plugins/dist/*.wasm (WebAssembly
# components for the `transform` world of plugins/wit/hookyard-plugin-0.1.0/plugin.wit).
# One command on a fresh machine:
#
#   plugins/build.sh            # installs the toolchain if needed (apt), then builds
#   SKIP_APT=1 plugins/build.sh # never calls apt-get
#
# Idempotent: a second run with nothing changed takes a second or two and rewrites no file.
#
# How: rustup on these machines has no wasm32 standard library, but Debian's "rustc-web"
# toolchain ships the matching std *source* (rust-web-src), so `cargo -Zbuild-std` (allowed on a
# stable compiler by RUSTC_BOOTSTRAP=1) compiles std for wasm32-unknown-unknown itself. Debian's
# rustc has no rust-lld, so the component is linked by the wasm-component-ld that ships inside
# every rustup toolchain, pointed at Debian's wasm-ld-<LLVM major> (package lld-<N>), with no
# WASI adapter: the plugins import nothing but the `host` interface.
# Only Debian's packages and the crate registry are used. rustup's cargo stays the default
# on PATH; this script calls /usr/bin/cargo and scrubs variables set by an outer cargo.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/dist"
target_dir="$(dirname "$here")/target/wasm-plugins"   # under the repo's ignored /target
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  [ -z "${SKIP_APT:-}" ] || { echo "build.sh: error: missing $*, and SKIP_APT is set" >&2; exit 1; }
  if [ -z "${_apt_updated:-}" ]; then $SUDO apt-get update -qq; _apt_updated=1; fi
  echo "build.sh: apt-get install $*" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. Toolchain: Debian's rustc-web, its cargo and its std source, all of one version.
if ! [ -x /usr/bin/rustc ] || ! [ -x /usr/bin/cargo ] || ! [ -e /usr/lib/rustlib/src/rust/library/std/Cargo.toml ]; then
  apt_install rustc-web cargo-web rust-web-src
fi
rust_ver=$(/usr/bin/rustc -vV | sed -n 's/^release: //p')
llvm_major=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
src_ver=$(basename "$(readlink -f /usr/lib/rustlib/src/rust)")
[ "$src_ver" = "rustc-$rust_ver" ] || {
  echo "build.sh: error: /usr/bin/rustc is $rust_ver but the std source is $src_ver (apt-get install rustc-web cargo-web rust-web-src)" >&2; exit 1; }
wasm_ld=/usr/bin/wasm-ld-$llvm_major
[ -x "$wasm_ld" ] || apt_install "lld-$llvm_major"
[ -x "$wasm_ld" ] || { echo "build.sh: error: $wasm_ld not found" >&2; exit 1; }
cld=$(ls "${RUSTUP_HOME:-$HOME/.rustup}"/toolchains/*/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld 2>/dev/null | head -n1 || true)
[ -n "$cld" ] || cld=$(command -v wasm-component-ld || true)
[ -n "$cld" ] || { echo "build.sh: error: no wasm-component-ld (it ships with rustup toolchains; or: cargo install wasm-component-ld)" >&2; exit 1; }

# 2. Build the whole workspace in one cargo call (one lock file, std built once).
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS \
      CARGO_BUILD_TARGET CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR RUSTUP_TOOLCHAIN CARGO \
      CARGO_MAKEFLAGS MAKEFLAGS MFLAGS CARGO_PRIMARY_PACKAGE CARGO_MANIFEST_DIR
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$cld"
# --initial-memory: start with 2 MiB (1 MiB of stack, 1 MiB of heap) rather than just the stack,
# so a typical event needs no memory.grow: a grown memory must be shrunk back with mprotect after
# the call, a TLB shootdown that doubled the cost of a no-op call. Untouched pages cost nothing
# (copy-on-write), but it makes 2 MiB the smallest usable `memory_mb`.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-Clink-arg=--wasm-ld-path=$wasm_ld -Clink-arg=--wasi-adapter=none -Clink-arg=--initial-memory=2097152"
target=wasm32-unknown-unknown
echo "build.sh: rustc $rust_ver, wasm-ld $llvm_major, building plugins for $target" >&2
/usr/bin/cargo build --release --locked --workspace --manifest-path "$here/Cargo.toml" \
  --target "$target" --target-dir "$target_dir" -Zbuild-std=std,panic_abort

# 3. Copy each cdylib to dist/, only when it changed (keeps mtimes, so a rebuild is a no-op).
mkdir -p "$out"
meta=$(/usr/bin/cargo metadata --no-deps --format-version 1 --manifest-path "$here/Cargo.toml")
for lib in $(printf '%s' "$meta" | python3 -c '
import json,sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "cdylib" in t["crate_types"]: print(t["name"].replace("-","_"))'); do
  built="$target_dir/$target/release/$lib.wasm"
  # A component starts with "\0asm" and the component layer 0d 00 01 00 (a core module: 01 00 00 00).
  [ "$(head -c 8 "$built" | od -An -tx1 | tr -d ' \n')" = "0061736d0d000100" ] || {
    echo "build.sh: error: $built is not a component" >&2; exit 1; }
  if ! cmp -s "$built" "$out/$lib.wasm"; then
    cp "$built" "$out/$lib.wasm"
    echo "build.sh: wrote plugins/dist/$lib.wasm ($(stat -c %s "$out/$lib.wasm") bytes)" >&2
  fi
done
echo "build.sh: plugins/dist is up to date" >&2
