"""Each doctor check's pass and fail paths, driven with real programs and real ORT sessions."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from voicelab import doctor
from voicelab.workspace import Workspace


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_python_versions() -> None:
    assert doctor.check_python((3, 11)).status == "pass"
    assert doctor.check_python((3, 9)).status == "fail"
    assert doctor.check_python((3, 13)).status == "fail"


def test_gpu_pass_with_a_working_nvidia_smi(tmp_path: Path) -> None:
    smi = _script(
        tmp_path / "nvidia-smi", 'echo "NVIDIA GeForce RTX 4060, 560.94, 8188 MiB, 7000 MiB"'
    )
    c = doctor.check_gpu(str(smi))
    assert c.status == "pass" and "RTX 4060" in c.detail


def test_gpu_fail_paths(tmp_path: Path) -> None:
    broken = _script(tmp_path / "nvidia-smi", 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    c = doctor.check_gpu(str(broken))
    assert c.status == "fail" and "NVIDIA-SMI has failed" in c.detail and c.fix
    assert not c.required
    missing = doctor.check_gpu(str(tmp_path / "none"))
    assert missing.status == "fail"


def test_wsl_detection(tmp_path: Path) -> None:
    wsl = "Linux version 5.15.153.1-microsoft-standard-WSL2"
    assert doctor.check_wsl("Linux version 6.1.0-debian", tmp_path).detail == "not WSL"
    assert doctor.check_wsl(wsl, tmp_path).status == "pass"
    warn = doctor.check_wsl(wsl, Path("/mnt/c/Users/u/ws"))
    assert warn.status == "warn" and "Linux filesystem" in warn.fix


def test_disk_thresholds(tmp_path: Path) -> None:
    assert doctor.check_disk(tmp_path, need_gb=0.001).status == "pass"
    c = doctor.check_disk(tmp_path, need_gb=10**9)
    assert c.status in ("warn", "fail") and "GB" in c.fix


def test_hardlinks_pass_and_fail(tmp_path: Path) -> None:
    assert doctor.check_hardlinks(tmp_path).status == "pass"
    # /proc does not allow creating files at all: the probe must report, not raise.
    assert doctor.check_hardlinks(Path("/proc/self")).status == "warn"


def test_programs_found_and_missing(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog in ("git", "ffmpeg"):
        os.symlink("/bin/true", bindir / prog)
    checks = {c.name: c for c in doctor.check_programs(str(bindir))}
    assert checks["git"].status == "pass"
    assert checks["ffmpeg"].status == "pass"
    assert checks["sox"].status == "warn" and "apt install" in checks["sox"].fix
    none = {c.name: c for c in doctor.check_programs(str(tmp_path / "empty"))}
    assert none["git"].status == "fail" and none["git"].required


def test_onnxruntime_probe_real_sessions() -> None:
    ok = doctor.check_onnxruntime()
    assert ok.status == "pass" and "CPU" in ok.detail
    # CUDA is not loadable on this machine: asking for it alone must be reported as such.
    bad = doctor.check_onnxruntime(providers=["CUDAExecutionProvider"])
    assert bad.status == "fail" and "CUDA" in bad.detail and "COSYVOICE_ORT_FORCE_CPU" in bad.fix


def test_onnxruntime_conflict() -> None:
    c = doctor.check_onnxruntime(installed={"onnxruntime", "onnxruntime-gpu"})
    assert c.status == "fail" and "pip uninstall" in c.fix


def test_hf_settings(tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": "https://hf-mirror.com", "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    c = doctor.check_hf(env)
    assert c.status == "pass" and "hf-mirror.com" in c.detail and "offline" in c.detail
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    bad = doctor.check_hf({"HF_HUB_CACHE": str(blocker / "hub")})
    assert bad.status == "fail" and "HF_HOME" in bad.fix


def test_doctor_cli_json_and_exit_code(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "w", "xuan")
    out = subprocess.run(
        [sys.executable, "-m", "voicelab", "-w", str(tmp_path / "w"), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    checks = json.loads(out.stdout)
    names = {c["name"] for c in checks}
    assert {"python", "gpu", "onnxruntime", "git", "disk", "huggingface"} <= names
    failed = [c for c in checks if c["status"] == "fail" and c["required"]]
    assert out.returncode == (1 if failed else 0)


def test_vendor_missing_is_a_required_failure(tmp_path: Path) -> None:
    import shutil

    shutil.copy(Path(__file__).resolve().parents[1] / "vendors.toml", tmp_path / "vendors.toml")
    checks = {c.name: c for c in doctor.check_vendor(tmp_path)}
    cv = checks["vendor cosyvoice"]
    assert cv.status == "fail" and cv.required and "voicelab vendor sync cosyvoice" in cv.fix
    assert checks["vendor rvc"].status == "skip"


def test_model_missing_and_incomplete(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w", "xuan")
    missing = doctor.check_model(ws)
    assert missing.status == "warn" and "voicelab download cosyvoice3" in missing.fix
    ws.base_model_dir.mkdir(parents=True)
    (ws.base_model_dir / "cosyvoice3.yaml").write_text("x")
    bad = doctor.check_model(ws)
    assert bad.status == "fail" and "download" in bad.fix
