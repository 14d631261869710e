"""Repository-level promises: CI runs README's test command; layering holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3\.11 -m venv .*?)\n```", text)


def test_ci_runs_the_readme_test_command() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    test_command = commands[1]
    assert "pytest" in test_command and "torch==2.13.0" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layers_import_downwards() -> None:
    forbidden = {
        "sim": (
            "gymnasium",
            "torch",
            "stable_baselines3",
            "llmserve_env.env",
            "llmserve_env.cli",
            "llmserve_env.build",
        ),
        "perf": (
            "gymnasium",
            "llmserve_env.sim",
            "llmserve_env.env",
            "llmserve_env.cli",
            "llmserve_env.build",
        ),
        "config": (
            "llmserve_env.perf",
            "llmserve_env.sim",
            "llmserve_env.env",
            "llmserve_env.cli",
            "gymnasium",
            "torch",
        ),
    }
    for layer, bad in forbidden.items():
        for path in (ROOT / "llmserve_env" / layer).rglob("*.py"):
            for name in _imports(path):
                assert not name.startswith(bad), f"{path.relative_to(ROOT)} imports {name}"


def test_no_global_random_state() -> None:
    pattern = re.compile(
        r"\b(np\.random\.(seed|rand|randn|randint|random|choice|normal|exponential|shuffle)\(|random\.(random|randint|choice|seed|shuffle)\()"
    )
    for path in (ROOT / "llmserve_env").rglob("*.py"):
        text = path.read_text()
        assert not pattern.search(text), f"{path.relative_to(ROOT)} uses global random state"
