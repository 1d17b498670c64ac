"""Loading a plan file with messages a user can act on: the file, the field path, what was
expected. Every failure is a `UserError`, which the CLI prints without a traceback (exit 2)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.errors import UserError
from harness.plan.cells import Cell, PlanProblem
from harness.plan.expand import expand
from harness.plan.schema import Plan
from harness.plan.yaml_input import MAX_PLAN_BYTES, PlanYamlError, load_plan_yaml

BUNDLED_QUICKSTART = "quickstart.yaml"


@dataclass(frozen=True)
class LoadedPlan:
    plan: Plan
    path: Path | None  # None for the bundled default
    text: str  # the plan exactly as given, stored with the run
    sha256: str
    cells: list[Cell]

    @property
    def display_name(self) -> str:
        return str(self.path) if self.path else f"<bundled {BUNDLED_QUICKSTART}>"

    @property
    def plan_dir(self) -> Path:
        """The folder the plan's relative paths are read from: its file's, or the current one
        for the bundled plan (which names no relative path)."""
        return Path(self.path).resolve().parent if self.path else Path.cwd()


def bundled_quickstart_text() -> str:
    return resources.files("harness.data").joinpath(BUNDLED_QUICKSTART).read_text("utf-8")


def load_plan(path: str | Path | None, *, check_paths: bool = True) -> LoadedPlan:
    """Read, parse, validate and expand a plan; `None` means the bundled quickstart.
    `check_paths=False` leaves out the checks that the files the plan names exist here."""
    if path is None:
        text, file, where, plan_dir = bundled_quickstart_text(), None, f"<bundled {BUNDLED_QUICKSTART}>", Path.cwd()
    else:
        file = Path(path)
        where = str(file)
        if not file.exists():
            raise UserError(f"{where}: no such plan file")
        if file.is_dir():
            raise UserError(f"{where}: is a directory; expected a YAML plan file")
        if file.stat().st_size > MAX_PLAN_BYTES:
            raise UserError(f"{where}: {file.stat().st_size:,} bytes; a plan is at most {MAX_PLAN_BYTES:,} bytes")
        try:
            text = file.read_text("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{where}: not a text file (expected YAML in UTF-8)") from None
        except OSError as exc:
            raise UserError(f"{where}: cannot be read ({exc.strerror})") from None
        plan_dir = file.resolve().parent
    return parse_plan(text, where, plan_dir, file, check_paths=check_paths)


def parse_plan(
    text: str,
    where: str,
    plan_dir: Path,
    file: Path | None = None,
    *,
    check_runtime_settings: bool = True,
    check_paths: bool = True,
) -> LoadedPlan:
    data = _parse_yaml(text, where)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation(where, exc)) from None
    try:
        cells = expand(plan, plan_dir, check_runtime_settings=check_runtime_settings, check_paths=check_paths)
    except PlanProblem as exc:
        count = len(exc.problems)
        lines = [f"{where}: the plan is not valid ({count} problem{'s' if count > 1 else ''}):"]
        lines += [f"  {field}: {what}" for field, what in exc.problems]
        raise UserError("\n".join(lines)) from None
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return LoadedPlan(plan=plan, path=file, text=text, sha256=sha, cells=cells)


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    if not text.strip():
        raise UserError(f"{where}: the file is empty; expected a YAML mapping with at least `name` and `models`")
    try:
        data = load_plan_yaml(text)
    except PlanYamlError as exc:
        raise UserError(f"{where}: {exc}") from None
    except RecursionError:
        raise UserError(f"{where}: the YAML is nested too deeply to be a plan") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise UserError(f"{where}: YAML syntax error at {at}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML ({exc})") from None
    if data is None:
        raise UserError(f"{where}: the file holds no YAML content; expected a mapping with `name` and `models`")
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a YAML mapping at the top level, found a {type(data).__name__}")
    return data


def _format_validation(where: str, exc: ValidationError) -> str:
    lines = [f"{where}: the plan is not valid ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors(include_url=False):
        field = _field_path(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            what = "unknown key (check its spelling; unknown keys are errors, not ignored)"
        elif kind == "missing":
            what = "required, but missing"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            # pydantic names the Python class ("a valid dictionary or instance of PlanBudgets")
            what = f"expected a mapping of keys to values (`key: value` lines), got {_yaml_kind(err.get('input'))}"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            what = f"got {err.get('input')!r}; expected one of {expected}"
        else:
            what = err["msg"].removeprefix("Value error, ")
            if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
                what += f" (got {err['input']!r})"
        lines.append(f"  {field or '<top level>'}: {what}")
    return "\n".join(lines)


def _yaml_kind(value: Any) -> str:
    """What a YAML value is, in YAML's words (a list, a number, a string...)."""
    if isinstance(value, list):
        return f"a list ({value!r:.60})"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r:.60})"
    return "nothing (null)" if value is None else f"{type(value).__name__}"


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "literal[", "str", "dict[")):
            continue  # pydantic's union-branch names: noise to a user
        else:
            out += f".{part}" if out else str(part)
    return out
