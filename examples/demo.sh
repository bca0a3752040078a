#!/usr/bin/env bash
# memedit's main job on the embedded default model (SmolLM2-135M-Instruct):
# init, ask, apply examples/facts.jsonl, ask again, forget one fact, export.
# Run through `make demo`, which installs memedit into .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${MEMEDIT_DEMO_DIR:-demo}
rm -rf "$work" && mkdir -p "$work"
m() { echo "\$ memedit $*" >&2; memedit -C "$work" "$@"; }
q1="The Eiffel Tower is located in the city of"
q2="The CEO of Acme Corporation is"

m init
m ask "$q1" --max-new-tokens 6
m ask "$q2" --max-new-tokens 6
m apply examples/facts.jsonl
m ask "$q1" --max-new-tokens 6
m ask "$q2" --max-new-tokens 6
m eval examples/facts.jsonl
m log
m forget eiffel-rome
m ask "$q1" --max-new-tokens 6
m status
m export --merged "$work/merged" --force
m fsck
