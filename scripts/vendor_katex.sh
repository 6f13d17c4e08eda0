#!/usr/bin/env bash
# Refresh the KaTeX build vendored under docs/vendor/katex/ (MIT licence, kept as docs/vendor/katex/LICENSE).
#
# The docs site renders math with this local copy, so `mkdocs build` and the built site need no network.
# Run this only to change the KaTeX version (it needs npm and the npm registry); commit the result.
#   scripts/vendor_katex.sh            # the pinned version below
#   scripts/vendor_katex.sh 0.19.1
set -euo pipefail
VERSION="${1:-0.19.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/docs/vendor/katex"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# npm pack checks the tarball against the registry's sha512 integrity before writing it
(cd "$TMP" && npm pack --silent "katex@$VERSION" >/dev/null)
tar -xzf "$TMP/katex-$VERSION.tgz" -C "$TMP"
PKG="$TMP/package"

rm -rf "$DEST"
mkdir -p "$DEST/fonts"
cp "$PKG/LICENSE" "$DEST/LICENSE"
cp "$PKG/dist/katex.min.js" "$PKG/dist/katex.min.css" "$DEST/"
# woff2 only: every browser that runs the site reads it; the stylesheet's woff/ttf fallbacks are never fetched
cp "$PKG"/dist/fonts/*.woff2 "$DEST/fonts/"
echo "$VERSION" > "$DEST/VERSION"
echo "KaTeX $VERSION -> ${DEST#"$ROOT"/} ($(du -sh "$DEST" | cut -f1))"
