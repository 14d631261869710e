"""The notebooks are stored without outputs and run top to bottom.

Each notebook runs in a fresh kernel of *this* interpreter: a kernelspec written to a
temporary folder names ``sys.executable``, so a ``python3`` kernelspec elsewhere (a
user-wide one, or the venv's own, whose ``python`` resolves through ``PATH``) cannot
run it under another Python when the venv is not activated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402 - after the skips
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "llmserve-test"
# Per notebook: a line its outputs must contain, and the extras it needs.
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "01_quickstart.ipynb": ("SLO attainment:", ("matplotlib",)),
    "02_env_and_heuristics.ipynb": ("join_shortest_queue - round_robin:", ("matplotlib",)),
    "03_train_agent.ipynb": ("maskable_ppo", ("matplotlib", "sb3_contrib")),
}


def _code_cells(path: Path) -> list[Any]:
    notebook = nbformat.read(path, as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_every_notebook_is_covered() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stored_without_outputs(name: str) -> None:
    for cell in _code_cells(NOTEBOOKS / name):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear outputs"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """Kernelspecs from a temporary folder holding one kernel: this interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    (root / KERNEL).mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llmserve-env tests",
        "language": "python",
    }
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return KernelSpecManager(kernel_dirs=[str(root)])


def _text(outputs: list[Any]) -> str:
    parts = []
    for output in outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_runs_top_to_bottom(name: str, kernel_specs: KernelSpecManager, tmp_path: Path) -> None:
    expected, extras = EXPECTED[name]
    for module in extras:
        pytest.importorskip(module)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    # The temporary working folder keeps anything a notebook writes out of the repository.
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    assert not errors
    assert _text(cells[-1].outputs).strip() == sys.executable
    assert expected in "".join(_text(cell.outputs) for cell in cells[:-1])
