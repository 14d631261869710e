"""Interoperability with other simulators' setups and with real-engine runs:
LLMServingSim cluster configs and traces, and vLLM bench runs for validation."""
