"""Parsing a Config from `-cfg FILE.json` plus `--dotted.key value` overrides (jsonargparse).

jsonargparse rejects unknown keys and wrong types; the dataclasses' `__post_init__` reject out-of-range
values. Both end up as a single-line `UserError` here, which the CLI prints with exit code 2.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from model.config import Config, to_dict
from model.errors import UserError

DEFAULT_NAME = Config.name


def one_line(message: str) -> str:
    """jsonargparse messages span lines; our errors are one line."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def new_parser(prog: str, description: str) -> ArgumentParser:
    """A parser whose errors raise instead of exiting, so the CLI can print them on one line."""
    return ArgumentParser(prog=prog, description=description, exit_on_error=False, env_prefix=None)


def add_config_arguments(parser: ArgumentParser) -> None:
    """`-cfg FILE` and every Config key as `--dotted.key`; `--print_config` comes with ActionConfigFile."""
    parser.add_argument("-cfg", "--config", action=ActionConfigFile,
                        help="JSON config file (any key may be overridden after it as --dotted.key value)")
    parser.add_class_arguments(Config, None, as_group=False)


def check_json_files(argv: list[str]) -> None:
    """A .json given to -cfg must parse as JSON: say where it breaks (jsonargparse would report a YAML error)."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("-cfg", "--config") and value.endswith(".json") and Path(value).is_file():
            try:
                json.loads(Path(value).read_text())
            except json.JSONDecodeError as err:
                raise UserError(f"config {value} is not valid JSON: {err.msg} at line {err.lineno}, column "
                                f"{err.colno}; fix the file (no trailing commas, keys in double quotes)") from err


def parse(parser: ArgumentParser, argv: list[str]) -> Namespace:
    check_json_files(argv)
    try:
        return parser.parse_args(argv)
    except Exception as err:  # jsonargparse raises ArgumentError (and sometimes others) for bad input
        raise UserError(f"{one_line(err)} (see --help, or --print_config for the valid keys)") from err


def build_config(parser: ArgumentParser, ns: Namespace) -> Config:
    """Instantiate the dataclasses (runs their validation) and name the run after the config file."""
    sub = Namespace({f.name: ns[f.name] for f in dataclasses.fields(Config)})
    cfg = _instantiate(sub)
    config_files = ns.get("config") or []
    if cfg.name == DEFAULT_NAME and config_files:
        cfg.name = Path(str(config_files[-1])).stem
    return cfg


@functools.cache  # built once per process, like the main command's parser: parsing leaves it unchanged
def _config_only_parser() -> ArgumentParser:
    parser = new_parser("config", "Config only")
    parser.add_class_arguments(Config, None, as_group=False)
    return parser


def _instantiate(ns: Namespace) -> Config:
    try:
        return Config(**vars(_config_only_parser().instantiate(ns)))
    except UserError:
        raise
    except Exception as err:  # a type jsonargparse let through but a dataclass rejected
        raise UserError(one_line(err)) from err


_CHECKED: dict[str, Config] = {}  # canonical JSON of a stored config -> its Config, checked once per process


def from_dict(d: dict[str, Any]) -> Config:
    """A Config from a plain dict (`to_dict` output, e.g. a checkpoint's stored config), validated like a JSON file.
    A process often reads the same stored config several times (each Lightning system, each checkpoint load); the
    check costs tens of milliseconds, so it runs once per distinct dict and every caller gets its own copy."""
    key = _key(d)
    if key not in _CHECKED:
        try:
            ns = _config_only_parser().parse_object(d)
        except Exception as err:
            raise UserError(f"the stored config is invalid: {one_line(err)}") from err
        _CHECKED[key] = _instantiate(ns)
    return copy.deepcopy(_CHECKED[key])


def checked_dict(cfg: Config) -> dict[str, Any]:
    """`to_dict(cfg)` of a Config this process has already checked (parsed from a file or a stored dict), for a
    training system that stores it in its checkpoint: `from_dict` of it then hands back a copy of `cfg` instead of
    checking the same values again, about 70 ms a system (tests/test_configs.py checks that checking the dict of each
    shipped config gives that config back)."""
    d = to_dict(cfg)
    key = _key(d)
    if key not in _CHECKED:
        _CHECKED[key] = copy.deepcopy(cfg)
    return d


def _key(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, default=repr)
