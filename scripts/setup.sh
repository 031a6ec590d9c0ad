#!/usr/bin/env bash
# Set up VoiceLab on a fresh Debian/Ubuntu (or WSL2) machine: system packages, a virtual env in
# .venv, VoiceLab with its extras. Idempotent: a second run only checks.
#   scripts/setup.sh           core + asr + features + download + test (CPU torch; runs the tests)
#   scripts/setup.sh --train   also the train extra (torch/torchaudio pair upstream CosyVoice needs)
set -euo pipefail
cd "$(dirname "$0")/.."

train=0
for arg in "$@"; do
  case "$arg" in
    --train) train=1 ;;
    *) echo "usage: scripts/setup.sh [--train]" >&2; exit 2 ;;
  esac
done

# apt waits for another apt/dpkg (unattended-upgrades on a fresh machine) instead of failing.
apt_get() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 "$@"
}

# System packages (the notes' step 1): audio tools for intake and the test corpus, git for vendors.
missing=()
for prog in git git-lfs ffmpeg sox espeak-ng; do
  command -v "$prog" >/dev/null 2>&1 || missing+=("$prog")
done
ldconfig -p 2>/dev/null | grep -q libsndfile || missing+=(libsndfile1)
# Headless browser and a CJK font for the web page's tests (tests/test_ui_browser.py).
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver fonts-wqy-microhei)
apt_updated=0
if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}"
  apt_get update -qq
  apt_updated=1
  apt_get install -y -qq git git-lfs ffmpeg sox libsox-fmt-all espeak-ng libsndfile1 \
    chromium chromium-driver fonts-wqy-microhei >/dev/null
fi

# Python 3.10-3.12 (upstream documents 3.10; onnxruntime 1.32 needs 3.11+).
py="${PYTHON:-python3}"
"$py" - <<'PY' || { echo "VoiceLab needs Python 3.10-3.12: set PYTHON=/path/to/python3.11" >&2; exit 1; }
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY
# Debian/Ubuntu split venv (ensurepip) out of the system Python: python3.X-venv brings it back.
if [ ! -x .venv/bin/python ] && ! "$py" -c "import ensurepip, venv" 2>/dev/null; then
  ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  echo "installing python${ver}-venv (the system Python lacks ensurepip)"
  ((apt_updated)) || apt_get update -qq
  apt_get install -y -qq "python${ver}-venv" >/dev/null || apt_get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

if ((train)); then
  # torchaudio >= 2.9 must match torch exactly; 2.11 is the newest pair on the registry.
  .venv/bin/python -c "import torch, torchaudio" 2>/dev/null || "${pip[@]}" "torch==2.11.0" "torchaudio==2.11.0"
  "${pip[@]}" -e ".[asr,features,download,train,test]"
else
  # CPU torch for embeddings/tokens (.pt files). Where a local CPU wheel exists pip takes it.
  .venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" -e ".[asr,features,download,test]"
fi
echo "VoiceLab is installed in .venv ($(.venv/bin/voicelab --version))"
