"""``voicelab doctor``: one line per check, pass/warn/fail, and the fix for each failure.

Each check is a small function with its inputs passed in (PATH, /proc/version text, the
environment), so tests can drive every pass and fail path with real programs and real sessions.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from voicelab.console import echo
from voicelab.errors import VoiceLabError
from voicelab.paths import is_windows_mount
from voicelab.workspace import Workspace, find_root

GB = 1024**3


@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail | skip
    detail: str
    fix: str = ""
    required: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _ok(name: str, detail: str) -> Check:
    return Check(name, "pass", detail)


# ---- machine ------------------------------------------------------------------------------
def check_python(version: tuple[int, int] = sys.version_info[:2]) -> Check:
    text = f"Python {version[0]}.{version[1]} ({sys.executable})"
    if (3, 10) <= version <= (3, 12):
        return _ok("python", text)
    return Check("python", "fail", text, "use Python 3.10, 3.11 or 3.12 for the virtual env")


def check_gpu(nvidia_smi: str | None = None, timeout: float = 20) -> Check:
    """nvidia-smi answers with at least one GPU (the notes' step 0)."""
    exe = nvidia_smi or shutil.which("nvidia-smi")
    fix = (
        "no NVIDIA GPU seen: install the Windows NVIDIA driver (WSL2) or the Linux driver; "
        "CPU-only works for prepare and the tiny demo"
    )
    if not exe:
        return Check("gpu", "warn", "nvidia-smi not found", fix, required=False)
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=name,driver_version,memory.total,memory.free",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("gpu", "fail", f"nvidia-smi did not answer ({e})", fix, required=False)
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode != 0 or not lines:
        msg = (out.stderr or out.stdout).strip().splitlines()
        return Check(
            "gpu", "fail", f"nvidia-smi failed: {msg[0] if msg else out.returncode}", fix, False
        )
    return _ok("gpu", "; ".join(lines))


def check_torch_cuda() -> Check:
    """CUDA-enabled torch (only where torch is installed: the features/train extras)."""
    if importlib.util.find_spec("torch") is None:
        return Check(
            "torch",
            "skip",
            "torch not installed (only the features/train extras need it)",
            required=False,
        )
    code = (
        "import torch;print(torch.__version__, torch.version.cuda, torch.cuda.is_available(),"
        " torch.cuda.device_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or ["?"])[-1]
        return Check("torch", "fail", f"import torch failed: {err}", "reinstall torch", False)
    ver, cuda, avail, count = out.stdout.split()
    if avail == "True":
        return _ok("torch", f"torch {ver}, CUDA {cuda}, {count} GPU(s)")
    hint = (
        "a CPU-only torch: install a CUDA build for training (see README)"
        if cuda == "None"
        else ("CUDA torch but no GPU visible: check the driver and CUDA_VISIBLE_DEVICES")
    )
    return Check("torch", "warn", f"torch {ver}, CUDA {cuda}, no usable GPU", hint, required=False)


def check_wsl(proc_version: str | None = None, workspace: Path | None = None) -> Check:
    if proc_version is None:
        try:
            proc_version = Path("/proc/version").read_text()
        except OSError:
            proc_version = platform.platform()
    wsl = "microsoft" in proc_version.lower() or "wsl" in proc_version.lower()
    if not wsl:
        return _ok("wsl", "not WSL")
    if workspace is not None and is_windows_mount(workspace):
        return Check(
            "wsl",
            "warn",
            f"WSL2, and the workspace {workspace} lies on a Windows drive (slow IO, no hard links)",
            "keep the workspace on the Linux filesystem, e.g. ~/VoiceLab/workflows/cosyvoice "
            "(the recordings may stay on /mnt/c)",
            required=False,
        )
    return _ok("wsl", "WSL2, workspace on the Linux filesystem")


def check_hardlinks(folder: Path) -> Check:
    """Exported voices hard-link the base model's files: without links each voice costs ~5 GB."""
    probe_dir = folder if folder.exists() else folder.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        with tempfile.TemporaryDirectory(dir=probe_dir, prefix=".vl-link-") as d:
            a = Path(d) / "a"
            a.write_bytes(b"x")
            os.link(a, Path(d) / "b")
    except OSError as e:
        return Check(
            "hardlinks",
            "warn",
            f"no hard links under {probe_dir} ({e.strerror})",
            "voices will be full copies of the base model (~5 GB each); use a Linux filesystem",
            required=False,
        )
    return _ok("hardlinks", f"hard links work under {probe_dir}")


def check_disk(folder: Path, need_gb: float = 30.0) -> Check:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / GB
    text = f"{free:.1f} GB free under {probe}"
    if free >= need_gb:
        return _ok("disk", text)
    return Check(
        "disk",
        "warn" if free >= 8 else "fail",
        text,
        f"a full SFT run needs about {need_gb:.0f} GB (base model ~6 GB, ~2 GB per llm "
        "checkpoint): free space or move the workspace",
        required=free < 8,
    )


PROGRAMS = {
    "git": ("required for vendor sync", "sudo apt install -y git", True),
    "git-lfs": ("large files in model repos", "sudo apt install -y git-lfs", False),
    "ffmpeg": ("decodes mp3/m4a", "sudo apt install -y ffmpeg", False),
    "sox": ("audio tools", "sudo apt install -y sox libsox-dev", False),
}


def check_programs(path: str | None = None) -> list[Check]:
    checks = []
    missing = []
    for prog, (why, fix, required) in PROGRAMS.items():
        found = shutil.which(prog, path=path)
        if found:
            checks.append(_ok(prog, found))
        else:
            missing.append(prog)
            checks.append(
                Check(prog, "fail" if required else "warn", f"not found ({why})", fix, required)
            )
    if missing:
        line = "sudo apt install -y git git-lfs ffmpeg sox libsox-dev libsndfile1"
        for c in checks:
            if c.status != "pass":
                c.fix = f"{c.fix} (all at once: {line})"
    return checks


def check_libsndfile() -> Check:
    try:
        import soundfile
    except (ImportError, OSError) as e:
        return Check(
            "libsndfile",
            "fail",
            f"soundfile cannot load libsndfile ({e})",
            "sudo apt install -y libsndfile1",
        )
    return _ok("libsndfile", soundfile.__libsndfile_version__)


# ---- python packages -----------------------------------------------------------------------
def _dists() -> set[str]:
    return {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}


def check_onnxruntime(
    installed: set[str] | None = None, providers: list[str] | None = None
) -> Check:
    """Which ORT providers *actually* load: a real session on a tiny model for each."""
    from voicelab.blocks.onnxrt import probe_providers

    dists = installed if installed is not None else _dists()
    if "onnxruntime" in dists and "onnxruntime-gpu" in dists:
        return Check(
            "onnxruntime",
            "fail",
            "both onnxruntime and onnxruntime-gpu are installed: provider lookup breaks",
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
            "(or plain onnxruntime for CPU)",
        )
    try:
        result = probe_providers(providers)
    except VoiceLabError as e:
        return Check("onnxruntime", "fail", e.message, e.hint or "")
    ok = [p.replace("ExecutionProvider", "") for p, r in result.items() if r == "ok"]
    bad = {p.replace("ExecutionProvider", ""): r for p, r in result.items() if r != "ok"}
    detail = "loads: " + (", ".join(ok) or "none")
    if bad:
        detail += "; " + "; ".join(f"{p}: {r}" for p, r in bad.items())
        cuda_fix = (
            "CUDA provider listed but not loadable: install the CUDA 12 + cuDNN 9 libraries "
            "onnxruntime-gpu needs, or set COSYVOICE_ORT_FORCE_CPU=1 (features then run on CPU)"
        )
        return Check("onnxruntime", "fail" if not ok else "warn", detail, cuda_fix, not ok)
    return _ok("onnxruntime", detail)


def check_pkg_resources() -> Check:
    """pyworld (imported by upstream's data pipeline) needs pkg_resources: setuptools < 82."""
    if (
        importlib.util.find_spec("pyworld") is None
        and importlib.util.find_spec("torchaudio") is None
    ):
        return Check("setuptools", "skip", "train extra not installed", required=False)
    if importlib.util.find_spec("pkg_resources") is None:
        return Check(
            "setuptools",
            "fail",
            "pkg_resources is missing (setuptools >= 82): upstream cannot import pyworld",
            "pip install 'setuptools<82'",
        )
    return _ok("setuptools", "pkg_resources present")


def check_hf(env: Mapping[str, str] | None = None) -> Check:
    env = os.environ if env is None else env
    endpoint = env.get("HF_ENDPOINT", "https://huggingface.co (default)")
    home = env.get("HF_HUB_CACHE") or (
        str(Path(env["HF_HOME"]) / "hub") if env.get("HF_HOME") else "~/.cache/huggingface/hub"
    )
    offline = env.get("HF_HUB_OFFLINE", "") in ("1", "true", "True")
    cache = Path(os.path.expanduser(home))
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    detail = f"endpoint {endpoint}; cache {cache}" + ("; offline mode" if offline else "")
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        return Check(
            "huggingface",
            "fail",
            detail + " (not a writable folder)",
            "set HF_HOME to a writable folder",
            required=False,
        )
    return _ok("huggingface", detail)


# ---- project state -------------------------------------------------------------------------
def check_vendor(root: Path | None = None) -> list[Check]:
    try:
        from voicelab.vendor import vendor_status
    except ImportError:
        return [Check("vendor", "skip", "vendor support not installed", required=False)]
    checks = []
    try:
        states = vendor_status(root or find_root())
    except VoiceLabError as e:
        return [Check("vendor", "fail", e.message, e.hint or "")]
    for st in states:
        name = f"vendor {st.name}"
        if st.ok:
            checks.append(_ok(name, st.summary or str(st.dir)))
        elif st.optional and st.kind == "missing":
            checks.append(
                Check(name, "skip", f"not synced (optional): {st.action or ''}", required=False)
            )
        else:
            checks.append(
                Check(
                    name,
                    "warn" if st.optional else "fail",
                    st.summary or st.problem or "not usable",
                    st.action or f"voicelab vendor sync {st.name}",
                    not st.optional,
                )
            )
    return checks


def check_model(ws: Workspace) -> Check:
    try:
        from voicelab.models import verify_model_dir
    except ImportError:
        return Check("base model", "skip", "download support not installed", required=False)
    model_dir = ws.base_model_dir
    if not model_dir.exists():
        return Check(
            "base model",
            "warn",
            f"{model_dir} not downloaded",
            "voicelab download cosyvoice3",
            required=False,
        )
    from voicelab.upstream.tinymodel import is_tiny_model

    tiny = is_tiny_model(model_dir)
    fix = (
        "the tiny model is rebuilt by: voicelab demo --tiny (or voicelab run with [run] tiny)"
        if tiny
        else "voicelab download cosyvoice3 (re-fetches only the bad files)"
    )
    try:
        report = verify_model_dir(model_dir)
    except VoiceLabError as e:
        return Check("base model", "fail", e.message, e.hint or fix)
    if getattr(report, "ok", False):
        what = "tiny random model, complete" if tiny else "complete"
        return _ok("base model", f"{model_dir} {what}")
    return Check("base model", "fail", f"{model_dir}: {getattr(report, 'summary', report)}", fix)


# ---- all -----------------------------------------------------------------------------------
def run_checks(ws: Workspace) -> list[Check]:
    """Every check, in the order of the user's notes."""
    where = ws.root
    steps: list[Callable[[], Check | list[Check]]] = [
        check_python,
        check_gpu,
        check_torch_cuda,
        lambda: check_wsl(workspace=where),
        lambda: check_disk(where),
        lambda: check_hardlinks(where),
        check_programs,
        check_libsndfile,
        check_onnxruntime,
        check_pkg_resources,
        check_hf,
        check_vendor,
        lambda: check_model(ws),
    ]
    checks: list[Check] = []
    for step in steps:
        result = step()
        checks.extend(result if isinstance(result, list) else [result])
    return checks


_MARK = {"pass": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def render(checks: list[Check]) -> None:
    for c in checks:
        line = f"[{_MARK[c.status]}] {c.name:<16} {c.detail}"
        if c.status in ("warn", "fail") and c.fix:
            line += f"  -> {c.fix}"
        echo(line)
    fails = [c for c in checks if c.status == "fail" and c.required]
    echo(f"\n{len(fails)} required check(s) failed" if fails else "\nall required checks passed")
