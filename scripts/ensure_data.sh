#!/usr/bin/env bash
# Make sure the offline real data that some tests, examples and benchmarks read is present: Fashion-MNIST from
# Debian's package `dataset-fashion-mnist` (~30 MB, IDX files in /usr/share/datasets/fashion-mnist).
#
# Where apt-get can run (Debian/Ubuntu as root, e.g. a container or CI), it installs the package; where it
# cannot (macOS, no root, no network) it says how to get the files and exits 0: the tests that need them skip
# and name the reason (tests/conftest.py, fixture `fashion_mnist`). ROBUSTFAST_FASHION_MNIST=DIR points
# robustfast at another folder holding the four IDX files; then nothing is installed.
set -uo pipefail
dir=${ROBUSTFAST_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have() { for f in $files; do [ -f "$dir/$f" ] || return 1; done; }
note() { echo "robustfast: $*" >&2; }
skip="the tests that need it will be skipped (they say why)"
have && exit 0
if [ -n "${ROBUSTFAST_FASHION_MNIST:-}" ]; then
  note "Fashion-MNIST not found in ROBUSTFAST_FASHION_MNIST=$dir; $skip"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  note "Fashion-MNIST not found in $dir and apt-get is not available; $skip. To run them, put the four IDX files" \
       "($files) in a folder and set ROBUSTFAST_FASHION_MNIST=<folder>."
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  note "Fashion-MNIST not found in $dir; $skip. Install it with: sudo apt-get install dataset-fashion-mnist"
  exit 0
fi
note "installing Debian's dataset-fashion-mnist (Fashion-MNIST for the tests, ~30 MB)"
export DEBIAN_FRONTEND=noninteractive
# Registered but its files gone (deleted, or hidden): reinstall rather than install.
again=""; dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && again="--reinstall"
install() { apt-get install -y -qq $again dataset-fashion-mnist >/dev/null 2>&1; }
install || { apt-get update -qq >/dev/null 2>&1 && install; }
if have; then
  note "Fashion-MNIST installed in $dir"
else
  note "could not install dataset-fashion-mnist (no network?); $skip"
fi
exit 0
