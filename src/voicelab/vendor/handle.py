"""The handle later stages run upstream code with: the checkout, its import paths, the
environment."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import ConfigError, VendorError
from voicelab.paths import to_local_path
from voicelab.workspace import (
    find_root,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass
from voicelab.vendor.git import head_of
from voicelab.vendor.manifest import (
    COSYVOICE,
    COSYVOICE_DIR_ENV,
    VendorSpec,
    load_manifest,
    vendor_dir,
)

log = logging.getLogger(__name__)


@dataclass
class VendorRuntime:
    """What later stages need to run upstream code: the checkout, import paths, environment."""

    name: str
    root: Path
    commit: str
    import_paths: list[Path]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default ``os.environ``) with the import paths first on
        PYTHONPATH and UTF-8 stdio for the subprocess."""
        env = dict(os.environ if base is None else base)
        paths = [str(p) for p in self.import_paths]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONIOENCODING"] = "UTF-8"
        return env


_COSYVOICE_DEFAULT = VendorSpec(
    name=COSYVOICE,
    url="https://github.com/FunAudioLLM/CosyVoice.git",
    commit="ace7c47f41bbd303aa6bf1ea80e6f9fbd595cd40",
    path="vendor/CosyVoice",
    proof=[
        "cosyvoice/bin/train.py",
        "cosyvoice/cli/cosyvoice.py",
        "examples/libritts/cosyvoice3/conf/cosyvoice3.yaml",
        "third_party/Matcha-TTS/matcha/utils/audio.py",
    ],
    import_paths=[".", "third_party/Matcha-TTS"],
)


def runtime(name: str, root: Path | None = None, checkout: Path | None = None) -> VendorRuntime:
    """The runtime handle of any vendor; ``checkout`` overrides where it lives."""
    hint = f"run: voicelab vendor sync {name}"
    try:
        spec = load_manifest(root).get(name)
    except ConfigError:
        if name != COSYVOICE:
            raise
        spec = _COSYVOICE_DEFAULT
    d = checkout if checkout is not None else vendor_dir(spec, root or find_root())
    where = str(d) if checkout is not None else spec.path
    if not d.exists():
        raise VendorError(f"upstream {name} is missing ({where} does not exist)", hint)
    commit = ""
    if shutil.which("git"):
        commit = head_of(d) or ""
        if not commit and checkout is None:
            raise VendorError(f"upstream {name} is broken ({where} is not a git checkout)", hint)
    missing = [p for p in spec.proof if not (d / p).exists()]
    if missing:
        raise VendorError(
            f"upstream {name} is missing or broken ({where} lacks {missing[0]})", hint
        )
    if commit and commit != spec.commit:
        log.warning(
            "%s at %s is at %s, not at the pin %s", name, where, commit[:12], spec.commit[:12]
        )
    root_dir = d.resolve()
    return VendorRuntime(
        name=name,
        root=root_dir,
        commit=commit or "unknown",
        import_paths=[(root_dir / p).resolve() for p in spec.import_paths],
    )


def cosyvoice_runtime(root: Path | None = None) -> VendorRuntime:
    """The CosyVoice checkout later stages run: ``VOICELAB_COSYVOICE_DIR`` if set (used as is),
    else ``vendor/CosyVoice`` of the VoiceLab root. Raises VendorError when it is missing or
    broken; a checkout off its pin only logs a warning."""
    override = os.environ.get(COSYVOICE_DIR_ENV)
    checkout = to_local_path(override) if override else None
    return runtime(COSYVOICE, root, checkout)


def cosyvoice_expected_dir(root: Path | None = None) -> Path:
    """Where the CosyVoice checkout is looked for (``VOICELAB_COSYVOICE_DIR``, else the path
    ``voicelab vendor sync`` creates), whether it exists or not."""
    override = os.environ.get(COSYVOICE_DIR_ENV)
    if override:
        return to_local_path(override)
    try:
        spec = load_manifest(root).get(COSYVOICE)
    except ConfigError:
        spec = _COSYVOICE_DEFAULT
    return vendor_dir(spec, root or find_root())
