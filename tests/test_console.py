"""Console output conventions (issue 15 item 22)."""

from __future__ import annotations

import logging
import warnings

import pytest

from voicelab.console import setup_logging


def test_info_lines_do_not_wrap_when_piped(capfd: pytest.CaptureFixture[str]) -> None:
    # Output is captured (not a terminal): a long INFO line must stay one line.
    setup_logging()
    line = "prepare: /mnt/c/Users/someone/recordings " + "word " * 40 + "end"
    logging.getLogger("voicelab.test").info(line)
    err = capfd.readouterr().err
    assert line in err.splitlines()[-1], err


def test_pyworld_pkg_resources_warning_silenced_where_upstream_is_imported() -> None:
    from voicelab.upstream.inference_fixes import quiet_pkg_resources

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_pkg_resources()
        # What setuptools >= 67 says when pyworld imports pkg_resources.
        warnings.warn(
            "pkg_resources is deprecated as an API. See https://setuptools.pypa.io/",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]
