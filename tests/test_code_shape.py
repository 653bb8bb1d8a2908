"""The package's shape: functions a reader can hold in their head."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dfdc"
MAX_FUNCTION_LINES = 100  # no function in dfdc/ longer (the design's limit)
MAX_STEP_LINES = 80  # predict_videos' named steps (the design's limit for them)
PREDICT_STEPS = ("predict_videos", "_plan", "_collect", "_write", "_Collector.add", "_Collector.run_batch",
                 "_Workers.results", "_Workers.submit")


def function_lengths(path: Path) -> dict[str, int]:
    """Lines of every function and method of a module, by qualified name (Class.method)."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return lengths


def test_no_function_in_the_package_is_over_100_lines() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    long = [f"{path.relative_to(PACKAGE.parent)}:{name} ({n} lines)" for path in files
            for name, n in function_lengths(path).items() if n > MAX_FUNCTION_LINES]
    assert not long, "split these functions: " + ", ".join(long)


def test_predict_videos_is_named_steps_of_at_most_80_lines() -> None:
    lengths = function_lengths(PACKAGE / "predict.py")
    steps = {name: lengths[name] for name in PREDICT_STEPS}  # a step renamed or gone fails here too
    assert all(n <= MAX_STEP_LINES for n in steps.values()), steps


def test_the_shape_check_sees_a_long_function(tmp_path: Path) -> None:
    long = tmp_path / "long.py"
    long.write_text("class A:\n    def f(self):\n" + "        x = 1\n" * 120)
    assert function_lengths(long) == {"A.f": 121}
