"""What a user sees when a command cannot go on: one `error:` line, exit code 2.

Bad input is found before any model loads and raised as ValueError (or
FileNotFoundError / ImportError) with a message that names the field, the
value, the rule and a fix. jsonargparse wraps such errors in its own (a Union
subtype list and a `Namespace(...)` dump); `user_message` digs the original out
of the exception chain. Some failures can only show up once the run has
started (a corrupt checkpoint, an adapter for another base model, out of
memory, a full disk): those are `UserError`s or recognised by kind, and get
one line too. Anything else after the start is a bug and keeps its traceback.
`LLM_DIT_DEBUG=1` shows the traceback for everything.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

DEBUG_ENV = "LLM_DIT_DEBUG"
DEBUG_HINT = f"(set {DEBUG_ENV}=1 for a traceback)"
EXIT_CODE = 2

# Errors the user can fix by changing the command or the config (found before the run starts).
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, FileNotFoundError, ImportError)
# Packages whose exceptions only wrap ours: the message worth showing is further down the chain.
WRAPPER_PACKAGES = ("jsonargparse", "lightning", "argparse")


class UserFacing:
    """Marks an exception class as the user's to fix (a bad file, a wrong adapter), wherever it is
    raised: even after the run has started it gets one line instead of a traceback."""


class UserError(ValueError, UserFacing):
    """Bad input or a bad file found while the run is going (loading weights, an adapter, ...)."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(message: str) -> str:
    """Collapse a message to one line (list items joined with '; ')."""
    parts = [line.strip().removeprefix("- ").strip() for line in str(message).splitlines()]
    text = " ".join(part if part.endswith((":", ".", ";")) else part + ";" for part in parts if part)
    return text.rstrip(";")


def user_message(error: BaseException, started: bool) -> str | None:
    """The one line to show for `error`, or None when it is a bug (show the traceback).

    `started` says whether the run itself had begun (the model loading or generating):
    from then on only `UserFacing` errors and the known fault kinds count as the user's.
    """
    for link in _chain(error):
        message = _fault_message(link)
        if message is not None:
            return message
    if started:
        found = next((link for link in _chain(error) if isinstance(link, UserFacing)
                      or getattr(link, "before_first_image", False)), None)  # run-folder errors (llm_dit.run_folder)
        return None if found is None else one_line(str(found))
    if not isinstance(error, INPUT_ERRORS) and not _is_argument_error(error):
        return None
    return one_line(_original(error))


def _fault_message(error: BaseException) -> str | None:
    """Out of memory, a full disk, an unreadable safetensors file: not bugs, whenever they happen."""
    name = type(error).__name__
    if name in ("OutOfMemoryError", "OutOfMemoryAdviceError") or isinstance(error, MemoryError):
        text = one_line(str(error)) or "out of memory"
        if not text.startswith("out of memory"):
            text = f"out of memory: {text}"
        return (f"{text}; lower data.init_args.batch_size or the image size, or load the model in bfloat16 "
                "(--model.dtype bfloat16)")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {error.filename}" if error.filename else ""
        return (f"disk full{where} ({os.strerror(error.errno)}): free space on that disk, then re-run the same "
                "command; finished images are kept and not generated again")
    if name == "SafetensorError":
        return (f"a .safetensors file could not be read ({one_line(str(error))}): it is truncated or corrupt; "
                "download or export it again")
    return None


def _chain(error: BaseException) -> list[BaseException]:
    """`error`, then its causes (explicit first, then implicit), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


def _original(error: BaseException) -> str:
    """The message of the first exception in the chain raised by our code, not a wrapper's."""
    chain = _chain(error)
    for link in chain:
        if isinstance(link, INPUT_ERRORS) and not _raised_by_wrapper(link):
            return _strip_key(link)
    # Only wrappers (jsonargparse's own parse errors: a wrong type, an unknown key): condense them.
    return _trim_wrapper_message(str(chain[0]))


def _raised_by_wrapper(error: BaseException) -> bool:
    traceback = error.__traceback__
    if traceback is None:
        return _is_argument_error(error)
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    parts = Path(traceback.tb_frame.f_code.co_filename).parts
    return any(package in parts for package in WRAPPER_PACKAGES) or traceback.tb_frame.f_code.co_filename.endswith(
        "argparse.py")


def _strip_key(error: BaseException) -> str:
    # str(KeyError('x')) is "'x'": say what it is.
    if isinstance(error, KeyError) and len(error.args) == 1:
        return f"unknown key {error.args[0]!r}"
    return str(error)


def _is_argument_error(error: BaseException) -> bool:
    return type(error).__name__ in ("ArgumentError", "NSKeyError")


def _trim_wrapper_message(text: str) -> str:
    """A jsonargparse parse error as `<dotted key>: <problem>`, without subtype lists or value dumps.

    Its messages nest: `Parser key "data":` / `Problem with given class_path '...':` open a
    level, the leaves say what was wrong (`Expected a <class 'int'>. Got value: abc`,
    `unrecognized arguments: --study.sampelr={}`), and `- Expected a <class 'NoneType'>` is
    the other arm of an Optional, never the point.
    """
    keys: list[str] = []
    problems: list[str] = []
    for line in text.splitlines():
        stripped = line.strip().removeprefix("- ").strip()
        if stripped.startswith("Parser key "):
            keys.append(stripped.removeprefix("Parser key ").rstrip(":").strip('"'))
        elif stripped.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif stripped and not stripped.startswith(_NOISE):
            problems.append(stripped.rstrip(":"))
    if not problems:
        return " ".join(text.split())
    key = ".".join(keys)
    problem = "; ".join(dict.fromkeys(_leaf(key, p) for p in problems))
    if problem.startswith("Problems parsing config"):  # YAML syntax: the position is the fix
        return problem.replace('in "<unicode string>", ', "at ") + "; fix the YAML there"
    return f"{problem}; `{HELP_COMMAND}` lists the valid options"


HELP_COMMAND = "python -m llm_dit.cli <subcommand> --help"
_UNRECOGNIZED = re.compile(r"unrecognized arguments: --?([^\s=]+)(?:[= ](.*))?")
_EXPECTED = re.compile(r"Expected a (?:<class '([^']+)'>|(.+?))\. Got value: (.*)")
_LITERAL = re.compile(r"typing\.Literal\[(.*)\]")


def _leaf(key: str, problem: str) -> str:
    """One jsonargparse leaf message, rewritten to name the full dotted key and the value."""
    unrecognized = _UNRECOGNIZED.fullmatch(problem)
    if unrecognized:
        name, value = unrecognized.groups()
        full = f"{key}.{name}" if key and not name.startswith(key) else name
        given = f" (given {value})" if value else ""
        return f"unknown option {full}{given}: check its spelling"
    expected = _EXPECTED.fullmatch(problem)
    if expected:
        kind, other, value = expected.groups()
        literal = _LITERAL.fullmatch(other or "")
        if literal:
            kind = "one of " + literal.group(1).replace("'", "")
        return f"{key or 'a value'} must be {kind or other}, got {value!r}"
    return f"{key}: {problem}" if key else problem


_NOISE = ("Given value", "Subtypes:", "Errors:", "Namespace(", "Does not validate against any of the Union",
          "Expected a <class 'NoneType'>", "tip:", "usage:")


def report(error: BaseException, started: bool, subcommand: str | None = None) -> int | None:
    """Print one line for a user-facing error and return the exit code; None means re-raise it."""
    if debugging():
        return None
    message = user_message(error, started)
    if message is None:
        return None
    if subcommand:
        message = message.replace("<subcommand>", subcommand)
    print(f"error: {message}  {DEBUG_HINT}", file=sys.stderr)
    return EXIT_CODE
