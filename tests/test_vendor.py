"""Vendor management against real git: bare repositories in temp folders stand in for GitHub.

The fake CosyVoice carries the proof files and a Matcha-TTS submodule whose ``.gitmodules`` URL
is the real GitHub one, so a sync only works when the mirror or ``--url`` rewriting reaches the
submodule too. The manifest names GitHub URLs as well; ``Sources(mirror=<dir>)`` maps them onto
``<dir>/<owner>/<repo>.git``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from voicelab import vendor as v
from voicelab.cli.main import cli, main
from voicelab.errors import ConfigError, EnvironmentProblem, VendorError

GH_COSY = "https://github.com/FunAudioLLM/CosyVoice.git"
GH_MATCHA = "https://github.com/shivammehta25/Matcha-TTS.git"
PROOF = [
    "cosyvoice/bin/train.py",
    "cosyvoice/cli/cosyvoice.py",
    "examples/libritts/cosyvoice3/conf/cosyvoice3.yaml",
    "third_party/Matcha-TTS/matcha/utils/audio.py",
]
GIT_ID = ["-c", "user.name=VoiceLab Test", "-c", "user.email=test@voicelab.invalid"]

MANIFEST = """\
# test manifest: comments must survive `vendor pin`
[cosyvoice]
url = "{url}"
# the pin
commit = "{commit}"  # trailing comment
path = "vendor/CosyVoice"
import_paths = [".", "third_party/Matcha-TTS"]
proof = {proof}

[cosyvoice.submodules.matcha]
path = "third_party/Matcha-TTS"
url = "{matcha_url}"
commit = "{matcha_commit}"
"""


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [
            "git",
            *GIT_ID,
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    return proc.stdout.strip()


@dataclass
class Remotes:
    mirror: Path  # <mirror>/<owner>/<repo>.git, as GitHub lays them out
    cosy: Path
    matcha: Path
    c1: str  # CosyVoice commits; c1 records m1, c2 records m2
    c2: str
    m1: str
    m2: str


@pytest.fixture(scope="module")
def remotes(tmp_path_factory: pytest.TempPathFactory) -> Remotes:
    base = tmp_path_factory.mktemp("remotes")
    mirror = base / "gh"
    matcha_bare = mirror / "shivammehta25" / "Matcha-TTS.git"
    cosy_bare = mirror / "FunAudioLLM" / "CosyVoice.git"

    mw = base / "matcha-work"
    (mw / "matcha" / "utils").mkdir(parents=True)
    git("init", "-q", str(mw))
    (mw / "matcha" / "utils" / "audio.py").write_text("def mel_spectrogram():\n    pass\n")
    git("add", "-A", cwd=mw)
    git("commit", "-qm", "matcha 1", cwd=mw)
    m1 = git("rev-parse", "HEAD", cwd=mw)
    (mw / "README.md").write_text("matcha 2\n")
    git("add", "-A", cwd=mw)
    git("commit", "-qm", "matcha 2", cwd=mw)
    m2 = git("rev-parse", "HEAD", cwd=mw)
    matcha_bare.parent.mkdir(parents=True)
    git("clone", "-q", "--bare", str(mw), str(matcha_bare))

    cw = base / "cosy-work"
    git("init", "-q", str(cw))
    for p in PROOF[:3]:
        (cw / p).parent.mkdir(parents=True, exist_ok=True)
        (cw / p).write_text(f"# {p}\n")
    (cw / ".gitignore").write_text("__pycache__/\npretrained_models/*\n")
    git("submodule", "add", "-q", str(matcha_bare), "third_party/Matcha-TTS", cwd=cw)
    git("checkout", "-q", m1, cwd=cw / "third_party" / "Matcha-TTS")
    # The committed .gitmodules names GitHub, as upstream's does.
    git("config", "-f", ".gitmodules", "submodule.third_party/Matcha-TTS.url", GH_MATCHA, cwd=cw)
    git("add", "-A", cwd=cw)
    git("commit", "-qm", "cosy 1", cwd=cw)
    c1 = git("rev-parse", "HEAD", cwd=cw)
    git("checkout", "-q", m2, cwd=cw / "third_party" / "Matcha-TTS")
    (cw / "cosyvoice" / "bin" / "train.py").write_text("# train v2\n")
    git("add", "-A", cwd=cw)
    git("commit", "-qm", "cosy 2", cwd=cw)
    c2 = git("rev-parse", "HEAD", cwd=cw)
    cosy_bare.parent.mkdir(parents=True)
    git("clone", "-q", "--bare", str(cw), str(cosy_bare))
    return Remotes(mirror, cosy_bare, matcha_bare, c1, c2, m1, m2)


def write_manifest(root: Path, r: Remotes, commit: str | None = None, **urls: str) -> Path:
    path = root / "vendors.toml"
    path.write_text(
        MANIFEST.format(
            url=urls.get("url", GH_COSY),
            commit=commit or r.c1,
            proof=json.dumps(PROOF),
            matcha_url=urls.get("matcha_url", GH_MATCHA),
            matcha_commit=r.m1 if commit in (None, r.c1) else r.m2,
        )
    )
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICELAB_CONFIG", str(tmp_path / "user-config.toml"))
    monkeypatch.delenv("VOICELAB_COSYVOICE_DIR", raising=False)
    monkeypatch.setenv("VOICELAB_NO_PROGRESS", "1")


@pytest.fixture
def root(tmp_path: Path, remotes: Remotes, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "Voice Lab 数据"  # spaces and Chinese, as under /mnt/c/AIGC/数据集
    root.mkdir()
    write_manifest(root, remotes)
    monkeypatch.setenv("VOICELAB_ROOT", str(root))
    return root


def mirror(r: Remotes) -> v.Sources:
    return v.Sources(mirror=str(r.mirror))


def run_process(*args: str) -> tuple[int, str]:
    """The CLI the way users start it: a new `python -m voicelab` process."""
    proc = subprocess.run(
        [sys.executable, "-m", "voicelab", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """The CLI in this process through `main` (one-line errors, exit codes), output captured."""

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            main(list(args))
            rc = 0
        except SystemExit as e:
            rc = int(e.code or 0)
        cap = capsys.readouterr()
        return rc, cap.out + cap.err

    return run


def cosy_dir(root: Path) -> Path:
    return root / "vendor" / "CosyVoice"


def heads(root: Path) -> tuple[str, str]:
    d = cosy_dir(root)
    return git("rev-parse", "HEAD", cwd=d), git(
        "rev-parse", "HEAD", cwd=d / "third_party/Matcha-TTS"
    )


# ---- sync --------------------------------------------------------------------------------------
def test_sync_from_scratch_then_noop(root: Path, remotes: Remotes) -> None:
    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert res.ok and res.action == "cloned", res.detail
    assert heads(root) == (remotes.c1, remotes.m1)
    assert not (root / "vendor" / ".CosyVoice.partial").exists()
    (st,) = v.vendor_status(root)
    assert st.ok and st.kind == "cloned" and st.clean and st.at_pin and st.submodules_ok

    (again,) = v.sync(None, root, mirror(remotes))
    assert again.ok and again.action == "up to date"

    rt = v.cosyvoice_runtime(root)
    assert rt.commit == remotes.c1
    assert rt.import_paths == [
        cosy_dir(root).resolve(),
        cosy_dir(root).resolve() / "third_party/Matcha-TTS",
    ]
    env = rt.env({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [*map(str, rt.import_paths), "/x"]
    assert env["PYTHONIOENCODING"] == "UTF-8"


def test_cli_sync_with_mirror_file_url_then_noop(root: Path, remotes: Remotes) -> None:
    prefix = "file://" + str(remotes.mirror)
    rc, out = run_process("vendor", "sync", "--mirror", prefix)
    assert rc == 0, out
    assert "cloned" in out
    sub_url = git("config", "submodule.third_party/Matcha-TTS.url", cwd=cosy_dir(root))
    assert sub_url == prefix + "/shivammehta25/Matcha-TTS.git"
    assert git("remote", "get-url", "origin", cwd=cosy_dir(root)) == (
        prefix + "/FunAudioLLM/CosyVoice.git"
    )
    rc, out = run_process("vendor", "sync", "--mirror", prefix)
    assert rc == 0 and "up to date" in out, out


def test_url_overrides_reach_the_submodule(root: Path, remotes: Remotes) -> None:
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "vendor",
            "sync",
            "cosyvoice",
            "--url",
            f"cosyvoice={remotes.cosy}",
            "--url",
            f"matcha={remotes.matcha}",
        ],
    )
    assert res.exit_code == 0, res.output
    assert heads(root) == (remotes.c1, remotes.m1)
    assert git("config", "submodule.third_party/Matcha-TTS.url", cwd=cosy_dir(root)) == str(
        remotes.matcha
    )
    with pytest.raises(ConfigError, match="nope"):
        v.make_sources(urls={"nope": "/x"}, manifest=v.load_manifest(root))


def test_saved_sources_are_used_by_later_syncs(
    run_cli: Callable[..., tuple[int, str]],
    root: Path,
    remotes: Remotes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rc, out = run_cli("vendor", "sync", "--mirror", str(remotes.mirror), "--save")
    assert rc == 0 and "cloned" in out, out
    assert v.saved_sources().mirror == str(remotes.mirror)
    shutil.rmtree(cosy_dir(root))
    rc, out = run_cli("vendor", "config", "--clear", "--url", f"cosyvoice={remotes.cosy}")
    assert rc == 0 and "(none: GitHub)" in out and f"cosyvoice = {remotes.cosy}" in out, out
    rc, out = run_cli("vendor", "config", "--mirror", str(remotes.mirror))
    assert rc == 0 and str(remotes.mirror) in out and "cosyvoice =" in out, out

    # No flags, run from a sub-folder of the VoiceLab root: the saved settings apply.
    monkeypatch.delenv("VOICELAB_ROOT")
    (root / "workflows").mkdir()
    monkeypatch.chdir(root / "workflows")
    rc, out = run_cli("vendor", "sync", "cosyvoice")
    assert rc == 0 and "cloned" in out, out
    assert git("remote", "get-url", "origin", cwd=cosy_dir(root)) == str(remotes.cosy)
    rc, out = run_cli("vendor", "config", "--clear")
    assert rc == 0 and "(none: GitHub)" in out
    assert v.saved_sources().is_empty()


def test_pin_moved_and_resynced(
    run_cli: Callable[..., tuple[int, str]], root: Path, remotes: Remotes
) -> None:
    v.sync(["cosyvoice"], root, mirror(remotes))
    manifest = root / "vendors.toml"
    res = v.pin("cosyvoice", remotes.c2[:9], root, mirror(remotes))
    assert res.new == remotes.c2 and res.submodules["matcha"] == (remotes.m1, remotes.m2)
    text = manifest.read_text()
    assert f'commit = "{remotes.c2}"  # trailing comment' in text
    assert "# the pin" in text and "# test manifest" in text
    assert f'commit = "{remotes.m2}"' in text

    (st,) = v.vendor_status(root)
    assert not st.ok and "pinned" in (st.problem or "")
    (again,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert again.action == "updated", again.detail
    assert heads(root) == (remotes.c2, remotes.m2)

    # Adopt the current HEAD (nothing changes) and pin back by full id via the CLI.
    assert not v.pin("cosyvoice", "HEAD", root, mirror(remotes)).changed
    rc, out = run_cli("vendor", "pin", "cosyvoice", remotes.c1, "--mirror", str(remotes.mirror))
    assert rc == 0 and remotes.c1 in out, out
    (back,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert back.action == "updated" and heads(root) == (remotes.c1, remotes.m1)


def test_pin_without_checkout_and_missing_revision(root: Path, remotes: Remotes) -> None:
    manifest = root / "vendors.toml"
    before = manifest.read_text()
    with pytest.raises(VendorError, match="does not exist"):
        v.pin("cosyvoice", "f" * 40, root, mirror(remotes))
    with pytest.raises(VendorError, match="does not exist"):
        v.pin("cosyvoice", "no-such-branch", root, mirror(remotes))
    assert manifest.read_text() == before
    res = v.pin("cosyvoice", "main", root, mirror(remotes))  # no checkout: scratch fetch
    assert res.new == remotes.c2
    assert not (root / "vendor" / ".CosyVoice.pin-scratch").exists()


def test_dirty_checkout_refused_then_force(
    run_cli: Callable[..., tuple[int, str]], root: Path, remotes: Remotes
) -> None:
    v.sync(["cosyvoice"], root, mirror(remotes))
    d = cosy_dir(root)
    (d / "cosyvoice" / "cli" / "cosyvoice.py").write_text("# my edit\n")
    (d / "notes.txt").write_text("mine\n")
    (d / "third_party/Matcha-TTS/matcha/utils/audio.py").write_text("# edited\n")
    (d / "cosyvoice" / "__pycache__").mkdir()
    (d / "cosyvoice" / "__pycache__" / "x.pyc").write_bytes(b"ignored")  # git-ignored: not dirty
    write_manifest(root, remotes, commit=remotes.c2)

    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert not res.ok
    msg = res.error.one_line() if res.error else ""
    assert "cosyvoice/cli/cosyvoice.py" in msg and "notes.txt" in msg
    assert "third_party/Matcha-TTS/matcha/utils/audio.py" in msg
    assert "--force" in msg and "vendor pin cosyvoice HEAD" in msg
    assert "x.pyc" not in msg
    assert (d / "notes.txt").read_text() == "mine\n"  # left as it was
    assert heads(root) == (remotes.c1, remotes.m1)
    (st,) = v.vendor_status(root)
    assert st.clean is False and len(st.changed) == 3

    rc, out = run_cli("vendor", "sync", "--mirror", str(remotes.mirror))
    assert rc == 1 and "local changes" in out and out.count("error:") == 1, out

    (forced,) = v.sync(["cosyvoice"], root, mirror(remotes), force=True)
    assert forced.ok and forced.action == "updated", forced.detail
    assert heads(root) == (remotes.c2, remotes.m2)
    assert not (d / "notes.txt").exists()
    assert (d / "cosyvoice" / "__pycache__" / "x.pyc").exists()  # ignored files are kept
    (st,) = v.vendor_status(root)
    assert st.ok and st.clean


def test_commit_on_no_branch_is_not_moved_away_from(root: Path, remotes: Remotes) -> None:
    v.sync(["cosyvoice"], root, mirror(remotes))
    d = cosy_dir(root)
    (d / "mine.py").write_text("x = 1\n")
    git("add", "mine.py", cwd=d)
    git("commit", "-qm", "local work", cwd=d)
    local = git("rev-parse", "HEAD", cwd=d)
    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert not res.ok and "no branch holds" in res.detail
    assert git("rev-parse", "HEAD", cwd=d) == local
    v.pin("cosyvoice", "HEAD", root, mirror(remotes))  # adopt it
    (ok,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert ok.action == "up to date", ok.detail


# ---- interrupted clones -------------------------------------------------------------------------
def test_leftover_partial_clone_is_removed(root: Path, remotes: Remotes) -> None:
    # Exactly what a sync killed mid-clone leaves: a clone without checkout beside the target.
    partial = root / "vendor" / ".CosyVoice.partial"
    partial.parent.mkdir()
    git("clone", "-q", "--no-checkout", str(remotes.cosy), str(partial))
    (st,) = v.vendor_status(root)
    assert st.kind == "missing" and st.partial
    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert res.action == "cloned" and not partial.exists()
    assert heads(root) == (remotes.c1, remotes.m1)


class StalledGitServer:
    """An HTTP 'remote' that accepts the connection and never answers: a hung network."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.got_request = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.got_request.set()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def sync_killed_while_stalled(*urls: str) -> StalledGitServer:
    """Start `voicelab vendor sync cosyvoice --url NAME=<stalled server>...`, wait until git
    talks to the stalled remote, then SIGKILL the whole process group (sync and git children),
    as a closed terminal or a crash would."""
    server = StalledGitServer()
    args = []
    for item in urls:
        args += ["--url", item.format(stalled=f"http://127.0.0.1:{server.port}/repo.git")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicelab", "vendor", "sync", "cosyvoice", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert server.got_request.wait(30), "git never contacted the remote"
        time.sleep(0.2)  # let git write what it writes before the transfer
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        server.close()
        if proc.poll() is None:  # pragma: no cover
            os.killpg(proc.pid, signal.SIGKILL)
    return server


def test_killed_clone_leaves_nothing_mistaken_and_recovers(root: Path, remotes: Remotes) -> None:
    sync_killed_while_stalled("cosyvoice={stalled}")
    partial = root / "vendor" / ".CosyVoice.partial"
    assert (partial / ".git").is_dir() and not cosy_dir(root).exists()
    with pytest.raises(VendorError, match="missing") as err:
        v.cosyvoice_runtime(root)
    assert err.value.hint == "run: voicelab vendor sync cosyvoice"
    (st,) = v.vendor_status(root)
    assert not st.ok and st.partial

    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert res.action == "cloned", res.detail
    assert not partial.exists()
    assert heads(root) == (remotes.c1, remotes.m1)


def test_killed_submodule_fetch_recovers(root: Path, remotes: Remotes) -> None:
    v.sync(["cosyvoice"], root, mirror(remotes))
    d = cosy_dir(root)
    git("submodule", "deinit", "-q", "-f", "--all", cwd=d)
    shutil.rmtree(d / ".git" / "modules")
    sync_killed_while_stalled(f"cosyvoice={remotes.cosy}", "matcha={stalled}")
    assert (d / ".git" / "modules" / "third_party" / "Matcha-TTS").is_dir()  # git's leftover
    (st,) = v.vendor_status(root)
    assert not st.ok and "not checked out" in (st.problem or "")
    with pytest.raises(VendorError):
        v.cosyvoice_runtime(root)

    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert res.ok and res.action == "updated", res.detail
    assert heads(root) == (remotes.c1, remotes.m1)


# ---- link and status ----------------------------------------------------------------------------
def test_link_status_and_refusals(
    run_cli: Callable[..., tuple[int, str]], root: Path, remotes: Remotes, tmp_path: Path
) -> None:
    mine = tmp_path / "my-CosyVoice"
    git("clone", "-q", str(remotes.cosy), str(mine))  # at c2, not at the pin; no submodule yet

    not_cosy = tmp_path / "not-cosyvoice"
    (not_cosy / "src").mkdir(parents=True)
    with pytest.raises(VendorError, match="not a cosyvoice checkout"):
        v.link("cosyvoice", not_cosy, root)
    assert not cosy_dir(root).exists() and not cosy_dir(root).is_symlink()

    st = v.link("cosyvoice", mine, root)
    assert cosy_dir(root).is_symlink() and st.kind == "linked"
    assert not st.ok and "not checked out" in (st.problem or "")
    assert st.action == "voicelab vendor sync cosyvoice"
    # sync adds the missing submodule at the commit the linked checkout records (m2)
    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert res.ok and res.action == "linked" and "matcha checked out" in res.detail, res.detail
    assert git("rev-parse", "HEAD", cwd=mine) == remotes.c2  # a link is never moved
    assert git("rev-parse", "HEAD", cwd=mine / "third_party/Matcha-TTS") == remotes.m2
    (st,) = v.vendor_status(root)
    assert st.ok and st.warning and "pinned" in st.warning  # off the pin: warns, does not fail
    (again,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert again.action == "linked" and "checked out" not in again.detail

    rc, out = run_cli("vendor", "status", "--json")
    assert rc == 0, out
    (doc,) = json.loads(out)
    assert doc["kind"] == "linked" and doc["ok"] and doc["warning"] and not doc["at_pin"]
    assert doc["current"] == remotes.c2 and doc["pinned"] == remotes.c1
    rc, out = run_cli("vendor", "status")
    assert rc == 0 and "linked" in out and "warning" in out, out
    assert v.cosyvoice_runtime(root).commit == remotes.c2  # off-pin only warns

    # A real checkout under vendor/ is never replaced by a link.
    cosy_dir(root).unlink()
    v.sync(["cosyvoice"], root, mirror(remotes))
    with pytest.raises(VendorError, match="already holds"):
        v.link("cosyvoice", mine, root)
    assert not cosy_dir(root).is_symlink()

    rc, out = run_cli("vendor", "link", "cosyvoice", str(not_cosy))
    assert rc == 1 and "error:" in out and len(out.strip().splitlines()) == 1, out


def test_status_of_a_fresh_root_and_runtime_override(root: Path, remotes: Remotes) -> None:
    (st,) = v.vendor_status(root)
    assert st.kind == "missing" and st.problem == "not synced"
    assert st.action == "voicelab vendor sync cosyvoice"
    with pytest.raises(VendorError) as err:
        v.cosyvoice_runtime(root)
    assert (
        "missing" in err.value.message and err.value.hint == "run: voicelab vendor sync cosyvoice"
    )

    other = root.parent / "elsewhere"
    v.sync(["cosyvoice"], root, mirror(remotes))
    cosy_dir(root).rename(other)
    os.environ["VOICELAB_COSYVOICE_DIR"] = str(other)
    try:
        assert v.cosyvoice_runtime(root).root == other.resolve()
    finally:
        del os.environ["VOICELAB_COSYVOICE_DIR"]


# ---- bad input ----------------------------------------------------------------------------------
def test_no_git(
    run_cli: Callable[..., tuple[int, str]],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EnvironmentProblem, match="git is not installed"):
        v.sync(["cosyvoice"], root, v.Sources())
    (st,) = v.vendor_status(root)
    assert st.kind == "missing"  # status still works: it has nothing to run git on
    rc, out = run_cli("vendor", "sync")
    assert rc == 1 and out.count("\n") == 1 and "git is not installed" in out, out


def test_unreachable_remote_names_url_and_suggests_mirror(
    run_cli: Callable[..., tuple[int, str]], root: Path, remotes: Remotes
) -> None:
    url = "http://127.0.0.1:9/FunAudioLLM/CosyVoice.git"  # port 9: connection refused
    rc, out = run_cli("vendor", "sync", "cosyvoice", "--url", f"cosyvoice={url}")
    assert rc == 1 and url in out and "--mirror" in out, out
    assert len(out.strip().splitlines()) == 1, out  # one line
    assert not (root / "vendor" / "CosyVoice").exists()
    assert not (root / "vendor" / ".CosyVoice.partial").exists()

    missing = root.parent / "no-such-repo.git"
    (res,) = v.sync(["cosyvoice"], root, v.Sources(urls={"cosyvoice": str(missing)}))
    assert not res.ok and str(missing) in res.detail


def test_unreachable_submodule_names_its_url(root: Path, remotes: Remotes) -> None:
    src = v.Sources(urls={"cosyvoice": str(remotes.cosy), "matcha": "http://127.0.0.1:9/m.git"})
    (res,) = v.sync(["cosyvoice"], root, src)
    assert not res.ok and "http://127.0.0.1:9/m.git" in res.detail and "matcha" in res.detail
    assert not cosy_dir(root).exists()
    # The main clone stays under its .partial name (never taken for a checkout) ...
    assert (root / "vendor" / ".CosyVoice.partial" / ".git").is_dir()
    (st,) = v.vendor_status(root)
    assert st.kind == "missing" and st.partial
    # ... so a failed vendor stage is not repeated in full (issue 15 item 20): the next sync
    # fetches only the submodule; CosyVoice's own remote is not needed again.
    src = v.Sources(urls={"cosyvoice": "http://127.0.0.1:9/c.git", "matcha": str(remotes.matcha)})
    (res,) = v.sync(["cosyvoice"], root, src)
    assert res.ok and res.action == "cloned", res.detail
    assert heads(root) == (remotes.c1, remotes.m1)
    assert not (root / "vendor" / ".CosyVoice.partial").exists()


def test_pin_missing_on_remote(root: Path, remotes: Remotes) -> None:
    (root / "vendors.toml").write_text(
        (root / "vendors.toml").read_text().replace(remotes.c1, "0123456789" * 4)
    )
    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert not res.ok and "012345678901" in res.detail and "not on" in res.detail
    assert not cosy_dir(root).exists()
    assert not (root / "vendor" / ".CosyVoice.partial").exists()


def test_plain_folder_in_vendor_is_left_alone(root: Path, remotes: Remotes) -> None:
    d = cosy_dir(root)
    d.mkdir(parents=True)
    (d / "keep.txt").write_text("precious\n")
    (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert not res.ok and "plain folder" in res.detail
    assert (d / "keep.txt").read_text() == "precious\n" and sorted(os.listdir(d)) == ["keep.txt"]
    (st,) = v.vendor_status(root)
    assert st.kind == "plain folder" and not st.ok
    with pytest.raises(VendorError, match="not a git checkout"):
        v.cosyvoice_runtime(root)


def test_bad_manifest_and_unknown_vendor(root: Path, remotes: Remotes) -> None:
    with pytest.raises(ConfigError, match="unknown vendor"):
        v.sync(["nope"], root, mirror(remotes))
    (root / "vendors.toml").write_text('[cosyvoice]\nurl = "x"\ncommit = "abc"\n')
    with pytest.raises(ConfigError, match="40-digit"):
        v.load_manifest(root)


def test_disk_full_during_clone(root: Path, remotes: Remotes, tmp_path: Path) -> None:
    """vendor/ on a 256 KiB tmpfs (private mount namespace) against a remote of 2 MiB."""
    big_work = tmp_path / "big"
    git("clone", "-q", str(remotes.cosy), str(big_work))
    (big_work / "blob.bin").write_bytes(os.urandom(2 << 20))
    git("add", "blob.bin", cwd=big_work)
    git("commit", "-qm", "big", cwd=big_work)
    big = tmp_path / "big.git"
    git("clone", "-q", "--bare", str(big_work), str(big))
    vendor = root / "vendor"
    vendor.mkdir()
    script = (
        'mount -t tmpfs -o size=256k tmpfs "$1" || exit 77; '
        '"$2" -m voicelab vendor sync cosyvoice --url cosyvoice="$3" --url matcha="$4"; '
        'echo "rc=$?"; ls -A "$1"'
    )
    try:
        proc = subprocess.run(
            [
                "unshare",
                "-rm",
                "sh",
                "-c",
                script,
                "sh",
                str(vendor),
                sys.executable,
                str(big),
                str(remotes.matcha),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        pytest.skip("unshare is not available")
    if proc.returncode == 77 or "unshare" in proc.stderr.split(":")[0]:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    out = proc.stdout + proc.stderr
    assert "rc=1" in out and "disk full" in out, out
    left = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith(("rc=", "cosyvoice"))]
    assert left == [".CosyVoice.lock"], out  # no partial clone, no checkout


def test_mirror_and_url_rewriting_rules(tmp_path: Path) -> None:
    url = "https://github.com/FunAudioLLM/CosyVoice.git"
    proxy = "https://ghproxy.net/https://github.com/"
    assert v.rewrite_github(url, proxy) == proxy + "FunAudioLLM/CosyVoice.git"
    assert v.rewrite_github(url, "https://kkgithub.com") == (
        "https://kkgithub.com/FunAudioLLM/CosyVoice.git"
    )
    assert (
        v.rewrite_github("git@github.com:A/B.git", "file:///srv/git/") == "file:///srv/git/A/B.git"
    )
    assert v.rewrite_github(url, str(tmp_path)) == str(tmp_path / "FunAudioLLM/CosyVoice.git")
    assert v.rewrite_github("https://gitee.com/A/B.git", proxy) == "https://gitee.com/A/B.git"
    src = v.Sources(mirror=proxy, urls=v.parse_url_overrides(["matcha=rel/Matcha"]))
    assert src.resolve("matcha", "x") == str((Path.cwd() / "rel/Matcha").resolve())
    assert src.resolve("cosyvoice", url) == proxy + "FunAudioLLM/CosyVoice.git"
    assert v.is_local_url("C:\\repos\\CosyVoice") and v.is_local_url("file:///x")
    assert not v.is_local_url("git@gitee.com:a/b.git")
    with pytest.raises(ConfigError, match="NAME=URL"):
        v.parse_url_overrides(["cosyvoice"])


def test_a_second_sync_of_the_same_vendor_is_refused(root: Path, remotes: Remotes) -> None:
    import fcntl

    (root / "vendor").mkdir()
    with open(root / "vendor" / ".CosyVoice.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # what a running sync holds
        (res,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert not res.ok and "another voicelab" in res.detail
    assert not cosy_dir(root).exists()
    (ok,) = v.sync(["cosyvoice"], root, mirror(remotes))
    assert ok.action == "cloned"
