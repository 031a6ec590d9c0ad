from pathlib import Path

import pytest

from voicelab.paths import has_whitespace, is_windows_mount, safe_name, to_local_path


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (r"C:\AIGC\数据集\xuan\a.wav", "/mnt/c/AIGC/数据集/xuan/a.wav"),
        ("C:/AIGC/数据集/xuan/a.wav", "/mnt/c/AIGC/数据集/xuan/a.wav"),
        (r"D:\My Voice\片段 01.wav", "/mnt/d/My Voice/片段 01.wav"),
        (r"c:\x", "/mnt/c/x"),
        ("C:", "/mnt/c"),
        (r"\\wsl$\Ubuntu-24.04\home\u\data\a.wav", "/home/u/data/a.wav"),
        (r"\\wsl.localhost\Ubuntu\home\u", "/home/u"),
        ("/mnt/c/AIGC/数据集/xuan", "/mnt/c/AIGC/数据集/xuan"),
        ("/home/u/my data/说话人.wav", "/home/u/my data/说话人.wav"),
        ('"C:\\quoted path\\a.wav"', "/mnt/c/quoted path/a.wav"),
        ("  relative/x.wav ", "relative/x.wav"),
    ],
)
def test_to_local_path(given: str, expected: str) -> None:
    assert str(to_local_path(given)) == expected


def test_home_is_expanded() -> None:
    assert to_local_path("~/x") == Path.home() / "x"


def test_windows_mount() -> None:
    assert is_windows_mount(Path("/mnt/c/AIGC"))
    assert not is_windows_mount(Path("/mnt/data/AIGC"))
    assert not is_windows_mount(Path("/home/u"))


@pytest.mark.parametrize(
    "name", ["片段 01", "a/b\\c", "tab\tname", "x" * 200, "normal_name", "说话人一"]
)
def test_safe_name_has_no_whitespace_and_is_unique(name: str) -> None:
    out = safe_name(name)
    assert not has_whitespace(out)
    assert "/" not in out and "\\" not in out
    assert len(out) <= 80
    assert safe_name(name) == out


def test_safe_name_keeps_readable_names_and_separates_collisions() -> None:
    assert safe_name("说话人一") == "说话人一"
    assert safe_name("a b") != safe_name("a_b")
