"""llmserve-env: a Gymnasium environment around a fast, runtime-driven LLM-serving
cluster simulator.

``import llmserve_env`` registers the environment ids with Gymnasium.
"""

from __future__ import annotations

__version__ = "0.1.0"
