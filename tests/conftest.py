"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference"

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/reference (public reference data) is not present"
)


@pytest.fixture()
def shared() -> Path:
    """The reference-data folder; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/reference (public reference data) is not present")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled latency tables go to a temporary cache, never the user's."""
    import os

    os.environ["LLMSERVE_CACHE"] = str(tmp_path_factory.mktemp("llmserve-cache"))
