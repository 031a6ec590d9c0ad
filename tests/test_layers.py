"""The package's layers, checked on the import graph (issue 14).

Layers, bottom up, by package: building blocks (``blocks/``: audio, VAD, ASR, text, QC, fbank,
ONNX Runtime, records; and the infrastructure modules at the top: files, config, state, locks,
the stage contract ...), stages (``stages/``, ``models/``, ``vendor/``, ``evaluation/``,
``doctor``), the runner (``runner/``), front ends (``cli/``, ``web/``, ``serve/``). ``upstream/``
sits beside the stages and is the only code that imports upstream CosyVoice (or Matcha-TTS). Imports
inside functions count as imports (they run), except for the cycle check, which is about module load
order and so reads module-level imports only (``if TYPE_CHECKING:`` blocks excluded).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

BLOCKS = {
    "blocks", "fsutil", "paths", "errors", "console", "locks", "signals", "memory", "config",
    "state", "workspace", "testing", "htmlpage", "contract", "__init__",
}  # fmt: skip
RUNNER = {"runner"}
FRONT_ENDS = {"cli", "web", "serve", "__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "voicelab").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 2:
            parts.pop()
        out[".".join(parts)] = p
    return out


def _imports(path: Path, module_level: bool) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    if module_level:
        nodes: list[ast.AST] = []
        for n in tree.body:
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                continue
            nodes.extend(ast.walk(n) if isinstance(n, (ast.If, ast.Try)) else [n])
    else:
        nodes = list(ast.walk(tree))
    out: set[str] = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            subs = {f"{n.module}.{a.name}" for a in n.names}
            out.update(subs)
            if not subs <= set(MODULES):  # ``from pkg import submodule`` needs only that module
                out.add(n.module)
    return out


def _layer(module: str) -> str:
    top = module.split(".")[1] if "." in module else "__init__"
    if top == "upstream":
        return "upstream"
    if top in BLOCKS:
        return "block"
    if top in RUNNER:
        return "runner"
    if top in FRONT_ENDS:
        return "front"
    return "stage"


MODULES = _modules()


def _owned(names: set[str]) -> set[str]:
    """The VoiceLab modules among imported names (``from voicelab import x`` counts as x)."""
    return {n if n in MODULES else n.rsplit(".", 1)[0] for n in names if n.startswith("voicelab.")}


def test_the_layer_table_knows_every_module() -> None:
    assert len(MODULES) > 50
    assert {m.split(".")[1] for m in MODULES if "." in m} <= (
        BLOCKS | RUNNER | FRONT_ENDS | {"upstream"} | {_stage for _stage in _stage_names()}
    )


def _stage_names() -> set[str]:
    return {"stages", "models", "vendor", "evaluation", "doctor"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers(module: str) -> None:
    layer = _layer(module)
    names = _imports(MODULES[module], module_level=False)
    upstream = sorted(n for n in names if n.split(".")[0] in ("cosyvoice", "matcha"))
    assert layer == "upstream" or not upstream, f"only upstream/ imports CosyVoice: {upstream}"
    owned = _owned(names)
    bad = {
        "block": ("stage", "runner", "front", "upstream"),
        "upstream": ("runner", "front"),
        "stage": ("runner", "front"),
        "runner": ("front",),
        "front": (),
    }[layer]
    wrong = sorted(m for m in owned if _layer(m) in bad and not m.startswith("voicelab.testing"))
    assert not wrong, f"{module} ({layer}) imports {wrong}"


def test_no_import_cycles_at_module_level() -> None:
    graph = {m: _owned(_imports(p, module_level=True)) - {m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join([*stack[stack.index(dep) :], dep])
                )
            if dep in graph and not state.get(dep):
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)
