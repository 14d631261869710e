"""The simulator: event kernel, engines, KV cache, routing, workloads, metrics.

Nothing here imports gymnasium, torch or the command line; the simulator is usable and
tested on its own.
"""
