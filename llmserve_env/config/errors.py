"""Errors raised for bad input: scenario files, traces, profiles, command-line overrides."""

from __future__ import annotations


class LLMServeError(Exception):
    """Base class for every error this package raises on purpose."""


class ScenarioError(LLMServeError, ValueError):
    """A scenario (or an override of it) is invalid.

    Each problem names where it is: the file and line when known, and the dotted key.

    Attributes:
        problems: One ``(location, message)`` pair per problem, where location is a
            ``file:line: dotted.key`` string (parts omitted when unknown).
    """

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"invalid scenario {source}" if source else "invalid scenario"
        lines = [f"{head} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  {where}: {msg}" if where else f"  {msg}" for where, msg in problems]
        super().__init__("\n".join(lines))


class DataFileError(LLMServeError, ValueError):
    """A data file (trace, lengths CSV, profile, model config) is malformed or missing.

    The message names the file and, where it applies, the line number.
    """

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
