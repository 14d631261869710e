"""Where the shipped data lives: ``scenarios/`` and ``profiles/``.

In a source checkout (editable install) they sit at the repository root; in a wheel they
are packaged under ``llmserve_env/_data``. ``LLMSERVE_PROFILES`` and
``LLMSERVE_SCENARIOS`` override either location.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _locate(name: str, env_var: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    packaged = _PACKAGE / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name


def profiles_dir() -> Path:
    """The catalog folder (devices, models, measured profiles)."""
    return _locate("profiles", "LLMSERVE_PROFILES")


def scenarios_dir() -> Path:
    """The folder of shipped scenarios."""
    return _locate("scenarios", "LLMSERVE_SCENARIOS")
