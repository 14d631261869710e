"""Build the opt-in mypyc-compiled simulator core in place, or remove it.

    python benchmarks/build_compiled.py           # compile (40 s to 2 min on two cores)
    python benchmarks/build_compiled.py --clean   # back to pure Python

The modules are those listed for the ``mypyc`` build hook in pyproject.toml, with its
mypy arguments and options, so this builds what ``HATCH_BUILD_HOOK_ENABLE_MYPYC=1 pip
install .`` puts in a wheel (2 min without mypy's cache in .mypy_cache, 40 s with it).
The extension modules land next to the sources and are imported instead of them: an
edited ``.py`` file has no effect until the next build or ``--clean``. For tests and
benchmarks of the compiled core in a checkout; never commit the ``.so`` files
(``.gitignore`` lists them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hook_config() -> dict[str, object]:
    """The ``mypyc`` build-hook table of pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    config: dict[str, object] = project["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"][
        "mypyc"
    ]
    return config


def compiled_sources() -> list[str]:
    """The source files the hook compiles, relative to the repository root."""
    include = hook_config()["include"]
    assert isinstance(include, list)
    return [pattern.lstrip("/") for pattern in include]


def artefacts() -> list[Path]:
    """Compiled files of a previous build: one extension per module, plus the shared
    library mypyc puts at the root."""
    found: list[Path] = []
    for source in compiled_sources():
        stem = ROOT / source[: -len(".py")]
        found += stem.parent.glob(stem.name + ".*.so")
        found += stem.parent.glob(stem.name + "__mypyc.*.so")
    found += ROOT.glob("*__mypyc.*.so")
    return sorted(set(found))


def clean() -> None:
    for path in artefacts():
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")


def build(jobs: int) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    config = hook_config()
    mypy_args = config.get("mypy-args", [])
    options = config.get("options", {})
    assert isinstance(mypy_args, list) and isinstance(options, dict)
    clean()
    start = time.perf_counter()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        extensions = mypycify(
            [*mypy_args, *compiled_sources()],
            opt_level=str(options.get("opt_level", "3")),
            separate=bool(options.get("separate", False)),
            target_dir=os.path.join(tmp, "c"),
        )
        print(f"generated C in {time.perf_counter() - start:.0f} s")
        setup(
            name="llmserve-env-compiled-core",
            packages=[],
            py_modules=[],
            ext_modules=extensions,
            script_args=[
                "--quiet",
                "build_ext",
                "--inplace",
                f"--parallel={jobs}",
                f"--build-temp={os.path.join(tmp, 'temp')}",
                f"--build-lib={os.path.join(tmp, 'lib')}",
            ],
        )
    print(f"compiled {len(compiled_sources())} modules in {time.perf_counter() - start:.0f} s:")
    for path in artefacts():
        print(f"  {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.clean:
        clean()
    else:
        build(args.jobs)


if __name__ == "__main__":
    sys.exit(main())
