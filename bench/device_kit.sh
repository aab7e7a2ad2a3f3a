#!/usr/bin/env bash
# Build .device-kit/: wheels of everything bench/device_requirements.txt pulls in that the GPU
# machine's image (bench/device_image_packages.txt) lacks. That machine reaches no package
# index, so the kit travels with the working tree: run(carry=[".device-kit"], command="bash
# bench/device_run.sh"). Needs a CPython of the image's version (3.12) to resolve for.
#
#   bash bench/device_kit.sh            # PYTHON=python3.12 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.12}
KIT=.device-kit
LIMIT_MB=45 # the working tree (~14 MB) and the kit travel together, 64 MiB at most

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || {
    echo "device_kit: the image runs Python 3.12; point PYTHON at a 3.12 interpreter" >&2
    exit 2
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check)
# Resolve the whole closure (metadata only: the CUDA torch it names is never downloaded).
"${pip[@]}" install --quiet --dry-run --ignore-installed --report "$work/report.json" \
    -r bench/device_requirements.txt
"$work/venv/bin/python" - "$work/report.json" bench/device_image_packages.txt \
    >"$work/missing.txt" <<'PY'
import json, re, sys
normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
on_image = {normal(line.strip()) for line in open(sys.argv[2])
            if line.strip() and line[0] != "#"}
pinned = {normal(line.split("==")[0]) for line in open("bench/device_requirements.txt")
          if "==" in line and line[0] != "#"}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    # A pinned package travels even when the image has one (pandas: the image's may differ).
    if normal(name) not in on_image or normal(name) in pinned:
        print(f"{name}=={version}")
PY
rm -rf "$KIT.partial"
mkdir "$KIT.partial"
# pip wheel: downloads wheels, builds the few sdists (docrep) into wheels.
"${pip[@]}" wheel --quiet --no-deps -w "$KIT.partial" -r "$work/missing.txt"
size_mb=$(du -sm "$KIT.partial" | cut -f1)
if ((size_mb > LIMIT_MB)); then
    echo "device_kit: $size_mb MB of wheels, over the $LIMIT_MB MB the device tool can carry" \
        "beside the working tree; trim bench/device_requirements.txt" >&2
    exit 1
fi
rm -rf "$KIT"
mv "$KIT.partial" "$KIT"
echo "device_kit: $(ls "$KIT" | wc -l) wheels, $size_mb MB in $KIT/:" $(cat "$work/missing.txt")
