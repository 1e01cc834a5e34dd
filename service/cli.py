"""Settings as the entry points read them: flags over `AUDIOSERVE_*` variables, and every
mistake reported as one line naming what the user set, with exit status 2.

`python -m service` and `python -m service.cluster` both load their settings here:

- a flag (`--port`) overrides its variable (`AUDIOSERVE_PORT`), which overrides `.env`;
- a bad value is one line: the variable (or flag) as the user wrote it, the value, and
  what is allowed (pydantic's message), never a traceback;
- an `AUDIOSERVE_*` variable (environment or `.env`) that is no setting is refused the same
  way, naming the closest real one: a misspelt limit that is silently ignored leaves the
  server running without it. `AUDIOSERVE_CLUSTER_*` variables are the cluster's and are
  checked by `python -m service.cluster`; `OTHER_VARIABLES` are the project's own tools'.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsError

from service.settings import Settings

PREFIX = "AUDIOSERVE_"
CLUSTER_PREFIX = "AUDIOSERVE_CLUSTER_"
OTHER_VARIABLES = frozenset({"AUDIOSERVE_SLOW_TESTS", "AUDIOSERVE_BENCH_CLIENT",
                             "AUDIOSERVE_TEST_SCREENSHOTS"})
"""Variables of the test suite and the benchmarks, not settings of a server."""
FLAGS = {"host": "--host", "port": "--port", "models_dir": "--models-dir",
         "models": "--models", "provider": "--provider", "log_level": "--log-level"}
"""Settings that are flags too (field -> flag)."""
EXIT_USAGE = 2  # argparse's status for a bad command line; a bad setting is one too

S = TypeVar("S", bound=BaseSettings)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings", "each flag overrides its AUDIOSERVE_* variable; every other setting is "
                    "a variable only (README, Configuration)")
    group.add_argument("--host", help="address to listen on (AUDIOSERVE_HOST, default "
                                      "127.0.0.1)")
    group.add_argument("--port", help="port to listen on (AUDIOSERVE_PORT, default 8000)")
    group.add_argument("--models-dir", metavar="DIR",
                       help="folder of the model packs (AUDIOSERVE_MODELS_DIR, default models)")
    group.add_argument("--models", metavar="LIST",
                       help="packs to serve: auto (every pack found; none found is an "
                            "error), none, or e.g. clap,emotion2vec (AUDIOSERVE_MODELS)")
    group.add_argument("--provider", help="auto, cuda or cpu (AUDIOSERVE_PROVIDER)")
    group.add_argument("--log-level", metavar="LEVEL",
                       help="critical, error, warning, info, debug or trace "
                            "(AUDIOSERVE_LOG_LEVEL, default info)")


def flag_values(args: argparse.Namespace) -> dict[str, str]:
    """The settings given as flags, by field name."""
    return {field: value for field in FLAGS if (value := getattr(args, field, None)) is not None}


def fail(prog: str, problems: Iterable[str]) -> NoReturn:
    for problem in problems:
        print(f"{prog}: {problem}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def variable_names(cls: type[BaseSettings]) -> set[str]:
    """Every variable a settings class reads (nested models' fields too, where the class
    has a nested delimiter)."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    delimiter = cls.model_config.get("env_nested_delimiter")
    names = set()
    for name, field in cls.model_fields.items():
        names.add(prefix + name.upper())
        nested = _nested_model(field.annotation)
        if delimiter and nested is not None:
            names |= {f"{prefix}{name}{delimiter}{sub}".upper() for sub in nested.model_fields}
    return names


def unknown_variables(classes: Iterable[type[BaseSettings]], env: Mapping[str, str],
                      ignore_prefixes: tuple[str, ...] = ()) -> list[str]:
    """A line for each `AUDIOSERVE_*` variable none of `classes` reads."""
    known: set[str] = set().union(*(variable_names(cls) for cls in classes))
    problems = []
    for name in sorted({n.upper() for n in env}):
        if (not name.startswith(PREFIX) or name in known or name in OTHER_VARIABLES
                or name.startswith(ignore_prefixes)):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"{name} is not a setting{hint} (settings: README, Configuration)")
    return problems


def unknown_keys(values: Mapping[str, Any], cls: type[BaseModel], where: str = "") -> list[str]:
    """A line for each key of `values` (a Serve config file's `args`) that is no field of
    `cls`, naming the closest field: the same rule as for variables."""
    problems = []
    for key in values:
        if key not in cls.model_fields:
            close = difflib.get_close_matches(key, list(cls.model_fields), n=1, cutoff=0.6)
            hint = f"; did you mean {where}{close[0]}?" if close else ""
            problems.append(f"{where}{key} is not a setting{hint}")
    return problems


def environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The variables settings are read from: the process's, over the `.env` file's."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return values


def build_settings(cls: type[S], overrides: Mapping[str, Any], problems: list[str]) -> S | None:
    """`cls(**overrides)`, or None with a line per bad value added to `problems`."""
    try:
        return cls(**overrides)
    except ValidationError as exc:  # a name refused already (unknown variable) once
        named = {_named(p) for p in problems}
        problems.extend(line for line in _describe(cls, exc, overrides)
                        if _named(line) not in named)
    except SettingsError as exc:  # a nested setting that is not valid JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = _variable(cls, (field.group(1),) if field else ("?",), {})
        problems.append(f"{name}: not valid JSON ({exc})")
    return None


def load_settings(flags: Mapping[str, Any], prog: str) -> Settings:
    """The single-process service's `Settings`, or exit 2 with a line per problem."""
    problems = unknown_variables([Settings], environment(), ignore_prefixes=(CLUSTER_PREFIX,))
    settings = build_settings(Settings, flags, problems)
    if problems or settings is None:
        fail(prog, problems)
    return settings


def _describe(cls: type[BaseSettings], exc: ValidationError,
              overrides: Mapping[str, Any]) -> list[str]:
    """One line per setting: a union's alternatives (`3` or `auto`) joined into one."""
    by_name: dict[str, tuple[object, list[str]]] = {}
    for error in exc.errors():
        name = _variable(cls, error["loc"], overrides)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a setting"
        value, messages = by_name.setdefault(name, (error.get("input"), []))
        messages.append(message[:1].lower() + message[1:])
    lines = []
    for name, (value, messages) in by_name.items():
        if messages[0] == "is not a setting":
            lines.append(f"{name} is not a setting")
            continue
        rest = [m.removeprefix("input should be ") for m in messages[1:]]
        lines.append(f"{name}={value!r}: {' or '.join([messages[0], *rest])}")
    return lines


def _named(problem: str) -> str:
    """The variable a problem line is about."""
    return problem.split(maxsplit=1)[0].split("=", 1)[0]


def _variable(cls: type[BaseSettings], loc: tuple[Any, ...], overrides: Mapping[str, Any]) -> str:
    """The flag or variable behind an error's location (a nested model's field too)."""
    field = str(loc[0])
    if field in overrides and field in FLAGS:
        return FLAGS[field]
    parts = [field]
    info = cls.model_fields.get(field)
    delimiter = cls.model_config.get("env_nested_delimiter")
    if info is not None and delimiter and len(loc) > 1 and _nested_model(info.annotation):
        parts.append(str(loc[1]))
    prefix = str(cls.model_config.get("env_prefix", ""))
    return (prefix + str(delimiter or "_").join(parts)).upper()


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
