"""Load scenario YAML strictly: line numbers in errors, dotted-key overrides, JSON Schema."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmserve_env.config.errors import ScenarioError
from llmserve_env.config.schema import Scenario

Key = str | int
LineMap = dict[tuple[Key, ...], int]


class _LineLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _collect_lines(node: yaml.Node, path: tuple[Key, ...], out: LineMap) -> None:
    """Record the 1-based line of every key and list item below ``node``."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _collect_lines(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*path, index)] = item.start_mark.line + 1
            _collect_lines(item, (*path, index), out)


def parse_yaml(text: str, source: str = "<string>") -> tuple[Any, LineMap]:
    """Parse YAML text into plain data plus a map from key paths to line numbers.

    Raises:
        ScenarioError: on a YAML syntax error or a duplicate key, naming file and line.
    """
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ScenarioError([(where, f"YAML error: {exc.problem}")], source) from exc
    except yaml.YAMLError as exc:
        raise ScenarioError([(source, f"YAML error: {exc}")], source) from exc
    lines: LineMap = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return data, lines


def dotted(loc: Iterable[Key]) -> str:
    """``("cluster", "nodes", 0, "tp")`` -> ``cluster.nodes[0].tp``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_for(loc: Sequence[Key], lines: LineMap) -> int | None:
    for cut in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:cut]))
        if line is not None:
            return line
    return None


def _clean_loc(loc: Sequence[Key], data: Any) -> list[Key]:
    """Drop pydantic's union tags from ``loc`` by walking the input data along it.

    Pydantic reports ``workload.synthetic.arrival.poisson.rate_rps`` for a member of a
    discriminated union; the user wrote ``workload.arrival.rate_rps``.
    """
    out: list[Key] = []
    current = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(current, dict):
            if part in current:
                out.append(part)
                current = current[part]
            elif last or not isinstance(part, str):
                out.append(part)
            # else: a union tag or a validator name that is not a key: skip it
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            out.append(part)
            current = current[part]
        else:
            out.append(part)
            current = None
    return out


def _format_problem(error: Mapping[str, Any]) -> str:
    msg = str(error["msg"])
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key (check its spelling and the section it is in)"
    if kind == "union_tag_invalid":
        return f"{msg}"
    if kind == "literal_error" and "expected" in ctx:
        return f"invalid value {error.get('input')!r}; allowed: {ctx['expected']}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    given = error.get("input")
    if kind not in ("missing",) and not isinstance(given, dict | list) and given is not None:
        msg = f"{msg} (got {given!r})"
    return msg


def _problems(
    exc: ValidationError, data: Any, lines: LineMap, source: str | None
) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors():
        loc = _clean_loc(error["loc"], data)
        line = _line_for(loc, lines)
        where_parts = []
        if source:
            where_parts.append(f"{source}:{line}" if line is not None else source)
        key = dotted(loc)
        where = ": ".join([*where_parts, key] if key else where_parts)
        problems.append((where, _format_problem(error)))
    return problems


def parse_override(assignment: str) -> tuple[list[Key], Any]:
    """Split ``a.b.0.c=value``; the value is parsed as a YAML scalar or flow collection."""
    if "=" not in assignment:
        raise ScenarioError([("--set", f"expected dotted.key=value, got {assignment!r}")])
    key, _, raw = assignment.partition("=")
    key = key.strip()
    if not key:
        raise ScenarioError([("--set", f"empty key in {assignment!r}")])
    parts: list[Key] = [int(p) if p.isdigit() else p for p in key.split(".")]
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ScenarioError([(f"--set {key}", f"cannot parse value {raw!r}: {exc}")]) from exc
    return parts, value


def apply_overrides(data: Any, overrides: Iterable[str]) -> Any:
    """Return a copy of ``data`` with each ``dotted.key=value`` applied."""
    data = json.loads(json.dumps(data))  # a deep copy of plain YAML data
    for assignment in overrides:
        parts, value = parse_override(assignment)
        target = data
        for depth, part in enumerate(parts[:-1]):
            where = dotted(parts[: depth + 1])
            if isinstance(target, dict):
                if part not in target or not isinstance(target[part], dict | list):
                    target[part] = {}
                target = target[part]
            elif isinstance(target, list):
                if not isinstance(part, int) or part >= len(target):
                    raise ScenarioError(
                        [(f"--set {dotted(parts)}", f"{where}: no list item {part!r}")]
                    )
                target = target[part]
            else:
                raise ScenarioError([(f"--set {dotted(parts)}", f"{where} is not a section")])
        last = parts[-1]
        if isinstance(target, list):
            if not isinstance(last, int) or last >= len(target):
                raise ScenarioError([(f"--set {dotted(parts)}", f"no list item {last!r}")])
            target[last] = value
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise ScenarioError([(f"--set {dotted(parts)}", "parent is not a section")])
    return data


def validate_scenario(
    data: Any,
    *,
    source: str | None = None,
    base_dir: Path | None = None,
    lines: LineMap | None = None,
) -> Scenario:
    """Validate plain data as a :class:`Scenario`.

    Raises:
        ScenarioError: listing every problem with file:line and dotted key.
    """
    if not isinstance(data, dict):
        raise ScenarioError([(source or "", "a scenario must be a mapping of sections")], source)
    try:
        return Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ScenarioError(_problems(exc, data, lines or {}, source), source) from exc


def load_scenario_file(path: str | Path, overrides: Iterable[str] = ()) -> Scenario:
    """Read, override and validate a scenario YAML file.

    Args:
        path: The YAML file.
        overrides: ``dotted.key=value`` strings applied before validation.

    Raises:
        ScenarioError: on a missing file, bad YAML, or an invalid scenario.
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError([(str(path), "scenario file not found")], str(path))
    text = path.read_text(encoding="utf-8")
    data, lines = parse_yaml(text, str(path))
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_scenario(data, source=str(path), base_dir=path.parent, lines=lines)


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema of scenario files, for editors and external validators."""
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llmserve-env scenario"
    return schema
