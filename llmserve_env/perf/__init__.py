"""Performance models: device and model catalogs, memory sizing, latency models."""

from llmserve_env.perf.base import BatchShape, LatencyModel

__all__ = ["BatchShape", "LatencyModel"]
