"""The opt-in compiled core (mypyc): complete, and giving pure Python's results.

Runs when the modules listed for pyproject.toml's ``mypyc`` build hook are compiled in
this checkout (``python benchmarks/build_compiled.py``); skipped in a pure-Python tree.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _listed_modules() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        hook = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    return [p.strip("/").removesuffix(".py").replace("/", ".") for p in hook["include"]]


MODULES = _listed_modules()
COMPILED = [m for m in MODULES if not str(importlib.import_module(m).__file__).endswith(".py")]

pytestmark = pytest.mark.skipif(
    not COMPILED,
    reason="pure-Python build; `python benchmarks/build_compiled.py` compiles the core",
)

# Runs scenarios (one with a fork) and prints their results; with "pure" the listed
# modules are imported from their .py files, not the compiled extensions.
SCRIPT = """
import importlib.util, json, sys
if sys.argv[1] == "pure":
    class PreferSource:
        def find_spec(self, name, path=None, target=None):
            if name in MODULES:
                file = ROOT + "/" + name.replace(".", "/") + ".py"
                return importlib.util.spec_from_file_location(name, file)
            return None
    sys.meta_path.insert(0, PreferSource())
from llmserve_env.build import build_simulation, load_scenario
import llmserve_env.sim.instance
print(llmserve_env.sim.instance.__file__, file=sys.stderr)

def result(sim):
    summary = sim.run()
    del summary["wall_time_s"], summary["sim_speed_requests_per_s"]
    # As JSON text: exact for floats, and NaN equals NaN.
    return json.dumps([summary, sim.metrics.rows, sim.metrics.series])

out = {}
for name, overrides in [
    ("night-low-traffic", ["workload.duration_s=150", "power.idle_timeout_s=2"]),
    ("multi-turn-prefix", ["workload.num_sessions=40"]),
    ("dvfs-tpot-slo", ["workload.num_requests=300"]),
]:
    sim = build_simulation(load_scenario(name, overrides))
    sim.run_until(40.0)
    fork = sim.clone()
    out[name] = result(sim)
    out[name + " fork"] = result(fork)
print(json.dumps(out))
"""


def _run(mode: str) -> tuple[dict[str, str], str]:
    prelude = f"MODULES = {MODULES!r}\nROOT = {str(ROOT)!r}\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(proc.stdout), proc.stderr


def test_every_listed_module_is_compiled() -> None:
    assert COMPILED == MODULES, f"a partial build: only {COMPILED} are compiled"


def test_compiled_events_and_batch_shapes_are_read_only() -> None:
    # Final attributes: mypy rejects assignments; compiled classes refuse them too.
    from llmserve_env.perf.base import BatchShape
    from llmserve_env.sim.events import Arrival, IterationDone

    for obj, name in [
        (IterationDone(1, 2), "generation"),
        (Arrival(3), "index"),
        (BatchShape((8,), (0,)), "num_decodes"),
    ]:
        with pytest.raises(AttributeError):
            setattr(obj, name, 0)


def test_compiled_results_match_pure_python() -> None:
    compiled, where = _run("compiled")
    assert where.strip().endswith(".so"), where
    pure, where = _run("pure")
    assert where.strip().endswith("instance.py"), where
    assert compiled.keys() == pure.keys()
    for name in pure:
        assert compiled[name] == pure[name], name
        if name.endswith(" fork"):
            assert pure[name] == pure[name.removesuffix(" fork")], name
