#!/usr/bin/env bash
# control 12.6.1: `cargo deny check advisories` fails on a known vulnerability and passes
# once it is fixed. See README.md. Needs cargo-deny and crates.io (the fixture's metadata).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The advisory database, as cargo-deny keeps a fetched one: a git repository in the
# directory it derives from the default URL (https://github.com/rustsec/advisory-db).
# Were that name to change, the first check below fails for "another reason".
db="$work/dbs/advisory-db-3157b0e258782691"
mkdir -p "$work/dbs"
cp -r "$here/db" "$db"
git -C "$db" init -q
git -C "$db" add -A
git -C "$db" -c user.name=kiroku -c user.email=ci@kiroku.invalid commit -qm fixture

check() { # smallvec version -> cargo deny's exit status; output in $work/out-$1
  local crate="$work/crate-$1"
  mkdir -p "$crate/src"
  : > "$crate/src/lib.rs"
  cat > "$crate/Cargo.toml" <<TOML
[package]
name = "deny-fixture"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
smallvec = "=$1"

[workspace]
TOML
  cat > "$crate/deny.toml" <<TOML
[advisories]
db-path = "$work/dbs"
TOML
  # Crates from crates.io first: --offline (no advisory fetch) also stops cargo.
  cargo fetch -q --manifest-path "$crate/Cargo.toml"
  cargo deny --offline --manifest-path "$crate/Cargo.toml" check advisories \
    >"$work/out-$1" 2>&1
}

if check 1.6.0; then
  cat "$work/out-1.6.0"
  echo "FAIL: cargo deny passed smallvec 1.6.0 (RUSTSEC-2021-0003)" >&2
  exit 1
fi
if ! grep -q "RUSTSEC-2021-0003" "$work/out-1.6.0"; then
  cat "$work/out-1.6.0"
  echo "FAIL: cargo deny failed for another reason than RUSTSEC-2021-0003" >&2
  exit 1
fi
if ! check 1.6.1; then
  cat "$work/out-1.6.1"
  echo "FAIL: cargo deny refused the fixed smallvec 1.6.1" >&2
  exit 1
fi
echo "cargo deny: fails on RUSTSEC-2021-0003 (smallvec 1.6.0), passes the fix (1.6.1)"
