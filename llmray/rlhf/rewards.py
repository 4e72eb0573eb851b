"""Programmable rewards (RLVR): built-in verifiable reward functions and `module:function` references.

A `ppo` / `grpo` stage's `reward:` may name Python callables as `module:function`. Each is called
as `fn(prompt, completion, **record_fields) -> float`: `prompt` is the text of the prompt's last
turn (the question), `completion` the decoded response (stop token removed), `record_fields` the
prompt record's other fields (e.g. `reference`), passed only where the function's signature
accepts them (a `**kwargs` takes all). They run in the reward worker actors
(`llmray.rlhf.scoring`), never on the driver.

Built-ins, usable as `llmray.rlhf.rewards:<name>`:
  exact_match   1.0 when the completion's final answer equals the record's `reference`
                (numbers compared as numbers; `Answer: <x>` wins over the last number in the text)
  format_check  1.0 when the completion ends with `Answer: <number>` (the format
                `builtin:arithmetic` prompts ask for)

Also here: `resolve_callable` (import a reference, with a clear error; the config validator calls
it so a bad reference is a config error), `callable_source_digest` (the content of the function's
module file, for the stage fingerprint), `module_search_root` (where the driver found the module,
so the worker actors can import it too) and `wilson_interval` (the 95% interval of a rate).

Light imports only: config validation imports this module.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

# ---------------------------------------------------------------- built-in reward functions

_NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?"
_ANSWER_RE = re.compile(rf"answer\s*(?:is|:|=)?\s*\**\s*({_NUMBER})", re.IGNORECASE)
_NUMBER_RE = re.compile(_NUMBER)
_FORMAT_RE = re.compile(rf"Answer:\s*{_NUMBER}\s*\.?\s*$")


def final_answer(text: str) -> str | None:
    """The answer a completion gives: the number after its last `Answer:` (or `answer is`), else its
    last number; None when it has no number."""
    found = _ANSWER_RE.findall(text) or _NUMBER_RE.findall(text)
    return found[-1].replace(",", "") if found else None


def _as_number(text: str) -> float | None:
    try:
        return float(str(text).strip().replace(",", ""))
    except ValueError:
        return None


def _normalise(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" .!?\"'`")


def exact_match(prompt: str, completion: str, reference=None, **_) -> float:
    """1.0 when the completion's final answer equals `reference`, else 0.0.

    Numeric references compare as numbers (`12`, `12.0`, `1,2` vs `12`); other references compare
    with the whole completion, case and surrounding punctuation ignored. A record without a
    `reference` is an error (counted by the scorer), not a silent 0."""
    if reference is None:
        raise ValueError("exact_match needs a `reference` field in the prompt record")
    want = _as_number(reference)
    if want is None:
        return float(_normalise(completion) == _normalise(reference))
    got = final_answer(completion)
    value = _as_number(got) if got is not None else None
    return float(value is not None and math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-9))


def format_check(prompt: str, completion: str, **_) -> float:
    """1.0 when the completion ends with `Answer: <number>`, else 0.0."""
    return float(bool(_FORMAT_RE.search(completion.strip())))


# ---------------------------------------------------------------- references `module:function`


def is_function_ref(value: str) -> bool:
    """A `reward:` string with ':' names a function; stage names cannot contain one."""
    return ":" in value


def _split(ref: str) -> tuple[str, str]:
    module, _, name = ref.partition(":")
    if not module or not name or not all(p.isidentifier() for p in module.split(".") + name.split(".")):
        raise ValueError(f"{ref!r} is not a `module:function` reference (e.g. llmray.rlhf.rewards:exact_match)")
    return module, name


def _import(module: str):
    """Import `module`; when it is not found and the current directory is not on sys.path (console
    scripts leave it off), retry with it: Ray's local workers have it, so both sides agree."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        missing = (e.name or "").split(".")[0] == module.split(".")[0]
        if not missing or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module)


def resolve_callable(ref: str) -> Callable:
    """The callable a `module:function` reference names; ValueError saying what is wrong otherwise."""
    module, name = _split(ref)
    try:
        obj = _import(module)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
        raise ValueError(f"cannot import module {module!r} of {ref!r}: {type(e).__name__}: {e}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module!r} has no attribute {name!r} (from {ref!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{ref!r} is a {type(obj).__name__}, not a callable")
    return obj


def accepted_fields(fn: Callable) -> set[str] | None:
    """The keyword names `fn` takes besides prompt and completion; None when it takes **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass nothing extra
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return set(named[2:]) if len(named) >= 2 else set()


def _source_file(ref: str) -> Path | None:
    module = sys.modules.get(_split(ref)[0])
    if module is None:
        resolve_callable(ref)
        module = sys.modules[_split(ref)[0]]
    try:
        path = inspect.getsourcefile(module)
    except TypeError:  # a built-in or extension module
        return None
    return Path(path) if path else None


def callable_source_digest(ref: str) -> str:
    """sha256 of the reference and of its module's source file (just the reference for modules
    without one), so editing the file changes the fingerprint of the stages that call it. Only the
    defining module is read, not modules it imports."""
    h = hashlib.sha256(ref.encode())
    path = _source_file(ref)
    if path is not None and path.is_file():
        h.update(path.read_bytes())
    return h.hexdigest()


def module_search_root(ref: str) -> str | None:
    """The sys.path entry the driver imported the function's module from, when it is a plain folder
    on sys.path (not site-packages or an editable install): the reward workers get it on PYTHONPATH."""
    module = _split(ref)[0]
    path = _source_file(ref)
    if path is None:
        return None
    root = path.parent
    for _ in module.split(".")[1:] + ([""] if path.name == "__init__.py" else []):
        root = root.parent
    root_s = str(root)
    return root_s if root_s in sys.path or (root_s == os.getcwd() and "" in sys.path) else None


# ---------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a binomial rate successes / n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
