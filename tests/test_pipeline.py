"""Skip/redo rules of the stage graph, with real stages that write real files."""

import pytest

from voicelab.errors import ConfigError
from voicelab.runner.pipeline import RunOptions, Stage, run_pipeline, select, stage_states
from voicelab.workspace import Workspace


def _graph(ws: Workspace, calls: list[str]) -> list[Stage]:
    def make(name: str, deps: tuple[str, ...], keys: tuple[str, ...]) -> Stage:
        out = ws.root / f"{name}.out"

        def run(ws: Workspace, o: RunOptions) -> dict:
            calls.append(name)
            out.write_text(repr({k: o.get(ws, name, k) for k in keys}))
            return {"n": len(calls)}

        return Stage(
            name=name,
            inputs=deps,
            params=lambda ws, o: {k: o.get(ws, name, k, 0) for k in keys},
            run=run,
            outputs=lambda ws, o: [out],
            enabled=(lambda o: o.train_flow) if name == "flow" else (lambda o: True),
        )

    return [
        make("prepare", (), ("asr",)),
        make("features", ("prepare",), ("device",)),
        make("pack", ("features",), ("shards",)),
        make("train", ("pack",), ("epochs",)),
        make("flow", ("pack",), ("epochs",)),
        make("export", ("train", "flow"), ("name",)),
    ]


def _opts(**over: dict) -> RunOptions:
    return RunOptions(overrides=over)


def _states(ws: Workspace, g: list[Stage], o: RunOptions) -> dict[str, str]:
    return {s.name: s.state for s in stage_states(ws, g, o)}


def test_first_run_runs_all_and_second_skips_all(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    run_pipeline(tmp_workspace, g, _opts())
    assert calls == ["prepare", "features", "pack", "train", "export"]
    run_pipeline(tmp_workspace, g, _opts())
    assert calls == ["prepare", "features", "pack", "train", "export"]
    assert set(_states(tmp_workspace, g, _opts()).values()) == {"done", "disabled"}


def test_changing_one_option_makes_exactly_the_downstream_stale(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    run_pipeline(tmp_workspace, g, _opts())
    changed = _opts(pack={"shards": 8})
    states = stage_states(tmp_workspace, g, changed)
    assert {s.name: s.state for s in states} == {
        "prepare": "done",
        "features": "done",
        "pack": "stale",
        "train": "stale",
        "flow": "disabled",
        "export": "stale",
    }
    assert states[2].reason == "options changed: shards"
    assert states[3].reason == "waits for pack (stale)"
    calls.clear()
    run_pipeline(tmp_workspace, g, changed)
    assert calls == ["pack", "train", "export"]


def test_option_saved_in_toml_counts_like_a_flag(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    run_pipeline(tmp_workspace, g, _opts())
    tmp_workspace.set_option("train", "epochs", 4)
    assert _states(tmp_workspace, g, _opts())["train"] == "stale"
    assert _states(tmp_workspace, g, _opts())["pack"] == "done"


def test_enabling_flow_runs_flow_and_export_only(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    run_pipeline(tmp_workspace, g, _opts())
    calls.clear()
    run_pipeline(tmp_workspace, g, RunOptions(train_flow=True))
    assert calls == ["flow", "export"]


def test_missing_output_and_redone_dependency(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    run_pipeline(tmp_workspace, g, _opts())
    (tmp_workspace.root / "features.out").unlink()
    states = stage_states(tmp_workspace, g, _opts())
    assert states[1].state == "stale" and states[1].reason.startswith("output missing")
    calls.clear()
    run_pipeline(tmp_workspace, g, _opts())
    assert calls == ["features", "pack", "train", "export"]


def test_from_until_and_force(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    run_pipeline(tmp_workspace, g, RunOptions(until_stage="pack"))
    assert calls == ["prepare", "features", "pack"]
    assert _states(tmp_workspace, g, _opts())["train"] == "pending"
    calls.clear()
    run_pipeline(
        tmp_workspace, g, RunOptions(from_stage="features", until_stage="pack", force=True)
    )
    assert calls == ["features", "pack"]
    with pytest.raises(ConfigError):
        select(g, RunOptions(from_stage="nope"))
    with pytest.raises(ConfigError):
        select(g, RunOptions(from_stage="pack", until_stage="prepare"))


def test_failure_is_recorded_and_rerun_resumes(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    boom = {"on": True}
    train = g[3]

    def flaky(ws: Workspace, o: RunOptions) -> dict:
        if boom["on"]:
            raise ConfigError("no GPU memory", "lower --batch-frames")
        return train.run(ws, o)

    g[3] = Stage(train.name, train.deps, train.params, flaky, train.outputs)
    with pytest.raises(ConfigError):
        run_pipeline(tmp_workspace, g, _opts())
    st = {s.name: s for s in stage_states(tmp_workspace, g, _opts())}
    assert st["train"].state == "failed" and "lower --batch-frames" in st["train"].reason
    assert st["pack"].state == "done"
    boom["on"] = False
    calls.clear()
    run_pipeline(tmp_workspace, g, _opts())
    assert calls == ["train", "export"]


def test_stage_figures_are_kept_for_status(tmp_workspace: Workspace) -> None:
    calls: list[str] = []
    g = _graph(tmp_workspace, calls)
    run_pipeline(tmp_workspace, g, _opts())
    assert all(s.figures.get("n") for s in stage_states(tmp_workspace, g, _opts())[:4])


def test_status_command_lists_every_stage(tmp_workspace: Workspace) -> None:
    from click.testing import CliRunner

    from voicelab.cli.main import cli
    from voicelab.runner.pipeline import STAGE_NAMES

    res = CliRunner().invoke(cli, ["-w", str(tmp_workspace.root), "status"])
    assert res.exit_code == 0, res.output
    lines = [ln.split() for ln in res.output.splitlines()[1:]]
    assert [ln[0] for ln in lines] == STAGE_NAMES
    assert all(ln[1] in ("pending", "disabled") for ln in lines)
    as_json = CliRunner().invoke(cli, ["-w", str(tmp_workspace.root), "status", "--json"])
    assert '"stage": "train_llm"' in as_json.output


def test_run_options_remember_the_last_run(tmp_workspace: Workspace) -> None:
    from voicelab.runner.pipeline import run_options, save_run_options

    save_run_options(tmp_workspace, run_options(tmp_workspace, train_flow=True, tiny=True))
    again = run_options(Workspace.open(tmp_workspace.root))
    assert again.train_flow and again.tiny
    assert not run_options(tmp_workspace, train_flow=False).train_flow


def test_stage_names_and_order() -> None:
    from voicelab.runner.pipeline import STAGE_NAMES, default_stages

    assert STAGE_NAMES == [
        "vendor",
        "download",
        "prepare",
        "features",
        "pack",
        "train_llm",
        "train_flow",
        "export",
        "audition",
    ]
    deps = {s.name: s.deps for s in default_stages()}
    for name, ds in deps.items():
        assert all(STAGE_NAMES.index(d) < STAGE_NAMES.index(name) for d in ds)
