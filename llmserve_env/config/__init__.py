"""Scenario schema and loading: the bottom layer, imported by everything else."""

from llmserve_env.config.errors import DataFileError, LLMServeError, ScenarioError
from llmserve_env.config.loader import (
    apply_overrides,
    load_scenario_file,
    scenario_json_schema,
    validate_scenario,
)
from llmserve_env.config.schema import Scenario

__all__ = [
    "DataFileError",
    "LLMServeError",
    "Scenario",
    "ScenarioError",
    "apply_overrides",
    "load_scenario_file",
    "scenario_json_schema",
    "validate_scenario",
]
