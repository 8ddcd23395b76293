#!/bin/sh
# Re-render the figures of docs/ from their text sources (needs Graphviz: apt-get install graphviz).
set -eu
cd "$(dirname "$0")/.."
for src in docs/img/*.dot; do
    dot -Tpng -Gdpi=110 "$src" -o "${src%.dot}.png"
    echo "${src%.dot}.png"
done
