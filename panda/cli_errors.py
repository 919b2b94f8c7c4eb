"""jsonargparse's parse errors, said in one or two lines a person can act on.

jsonargparse reports a misspelt ``--model.init_args.lr_shedule`` as a 60-line "Does not validate against any of
the Union subtypes" block, because ``model`` may be any LightningModule subclass. The facts are in that block: the
key (``Parser key "model"``), the class (``Problem with given class_path 'panda.model.PandaLM'``) and the reason
(``Option 'lr_shedule' is not accepted``). :func:`condense` digs them out and, for an unknown key, names the
closest accepted one::

    model.init_args.lr_shedule: panda.model.PandaLM has no argument 'lr_shedule' (did you mean 'lr_schedule'?)

jsonargparse also says "not accepted" when the key exists but its value has the wrong type; then the value is
checked again against that one class's signature to name the expected type instead.
"""

from __future__ import annotations

import importlib
import inspect
import re

from panda.errors import did_you_mean

_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_NESTED = re.compile(r"NestedArg\(key='([^']+)', val='(.*)'\)")
_REQUIRED = re.compile(r"the following arguments are required: (.+)")
_KEY_REQUIRED = re.compile(r'Key "([^"]+)" is required')
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.+)")
_EXPECTED = re.compile(r"(Expected a .+?)(?:\n|$)")
_GOT_CLASS = re.compile(r"class_path='([^']+)'")
_MISSING_FILE = re.compile(r"File does not exist: '([^']+)'")


def condense(text: str) -> str:
    """The essence of jsonargparse's usage-and-error ``text`` (what it printed before exiting)."""
    message = text.split("error:", 1)[-1].strip()
    if (match := _UNRECOGNIZED.search(message)) is not None:
        return _unrecognized(match.group(1).split())
    if (match := _MISSING_FILE.search(message)) is not None:
        return f"--config {match.group(1)}: no such file"
    key = _dotted_key(message)
    class_path = _innermost_class(message)
    if (option := _first(_NOT_ACCEPTED, message)) is not None:
        return _not_accepted(key, class_path, option, message)
    if (required := _first(_REQUIRED, message)) is not None:
        where = f"{key}.init_args" if key else "the configuration"
        owner = f" ({class_path})" if class_path else ""
        names = ", ".join(f"{where}.{name.strip()}" for name in required.split(","))
        return f"missing required {names}{owner}: set it in a --config YAML or on the command line"
    if (required_key := _first(_KEY_REQUIRED, message)) is not None:
        return f"missing required {required_key}: set it in a --config YAML or on the command line"
    if key is not None and (expected := _first(_EXPECTED, message)) is not None:
        return f"{key}: {_plain(expected)}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:2])


def _dotted_key(message: str) -> str | None:
    """``Parser key "model"`` … ``Parser key "optimizer"`` → ``model.init_args.optimizer``; deeper levels (a
    source's ``format``) are joined with a dot: ``data.init_args.sources.format``."""
    keys = _PARSER_KEY.findall(message)
    if not keys:
        return None
    return ".".join([f"{keys[0]}.init_args.{keys[1]}" if len(keys) > 1 else keys[0], *keys[2:]])


def _innermost_class(message: str) -> str | None:
    found = [(m.start(), m.group(1)) for pattern in (_CLASS_PATH, _GOT_CLASS) for m in pattern.finditer(message)]
    return max(found)[1] if found else None


def _plain(expected: str) -> str:
    """``Expected a <class 'int'>. Got value: x`` → ``expected int, got 'x'``."""
    expected = re.sub(r"<class '([^']+)'>", r"\1", expected).rstrip(".")
    match = re.match(r"Expected a (.+?)\. Got value: (.*)", expected)
    if match is None:
        return expected
    kind, value = match.groups()
    if (choices := re.fullmatch(r"typing\.Literal\[(.*)\]", kind)) is not None:
        names = re.findall(r"'([^']*)'", choices.group(1))
        return f"{value!r} is not one of {', '.join(names)}{did_you_mean(value, names)}"
    return f"expected {kind}, got {value!r}"


def _first(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _parameters(cls) -> list[str]:
    try:
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        return []


def _not_accepted(key: str | None, class_path: str | None, option: str, message: str) -> str:
    cls = _import(class_path) if class_path else None
    where = f"{key}.init_args.{option}" if key else option
    if cls is None:
        return f"{where}: unknown argument"
    accepted = _parameters(cls)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if option in accepted:
        value = _NESTED.search(message)
        detail = _type_error(cls, option, value.group(2)) if value and value.group(1) == option else None
        return f"{where}: {detail or 'a value of the wrong type'} ({name})"
    return f"{where}: {name} has no argument {option!r}{did_you_mean(option, accepted)}"


def _type_error(cls, option: str, value: str) -> str | None:
    """What jsonargparse says about ``value`` for ``option`` of ``cls`` alone (the precise type message)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, fail_untyped=False, sub_configs=True)
        parser.parse_args([f"--{option}={value}"], defaults=False)
    except Exception as error:  # noqa: BLE001 - any failure here only means there is nothing more precise to say
        expected = _first(_EXPECTED, str(error))
        return _plain(expected) if expected else None
    return None


def _unrecognized(arguments: list[str]) -> str:
    """``unrecognized arguments: --trainer.max_stepz 3`` → the key and the closest Trainer/CLI option."""
    options = [a.split("=")[0] for a in arguments if a.startswith("--")]
    if not options:
        return f"unexpected argument(s): {' '.join(arguments)}"
    option = options[0].lstrip("-")
    group, _, name = option.partition(".")
    if group in ("optimizer", "lr_scheduler"):
        return (f"--{group}: set model.init_args.optimizer (class_path and init_args) and model.init_args.lr_schedule "
                "instead; PandaLM builds the optimizer together with its step-sized learning-rate schedule")
    if group == "trainer" and name and "." not in name:
        from lightning.pytorch import Trainer

        return f"{option}: lightning.pytorch.Trainer has no argument {name!r}{did_you_mean(name, _parameters(Trainer))}"
    known = ["config", "print_config", "ckpt_path", "seed_everything", "trainer", "model", "data", "optimizer",
             "lr_scheduler"]
    return f"{option}: unknown option{did_you_mean(group, known) if not name else ''}"
