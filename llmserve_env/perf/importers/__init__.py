"""Importers of other projects' latency profiles into the llmserve format.

Each importer reads a foreign folder and returns :class:`ImportResult` objects holding a
:class:`~llmserve_env.perf.profile_format.Profile`; :func:`write_profile` writes it.
Malformed input raises :class:`~llmserve_env.config.errors.DataFileError` naming the
file, line and column.
"""

from llmserve_env.perf.importers.common import ImportResult

__all__ = ["ImportResult"]
