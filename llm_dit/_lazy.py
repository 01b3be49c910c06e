"""Package facades that import their submodules on first use (PEP 562 module `__getattr__`).

A package's `__init__` re-exports its public names so users write `from llm_dit.encoding import
ZImageTextEncoder`; importing them eagerly would make every `import llm_dit.encoding.options`
(a dataclass) pay for transformers and torch too. `lazy_exports` gives the package a
`__getattr__` that imports the submodule holding a name when the name is first read.
tests/test_lazy_imports.py checks that every name resolves and every submodule is the
package's own (a facade must not hide an import of another package from tests/test_imports.py).
"""

from __future__ import annotations

from collections.abc import Callable
import sys
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` whose public `name` lives in `exports[name]`
    (a submodule's dotted name). Usage in an `__init__.py`:

        __getattr__, __dir__ = lazy_exports(__name__, {"ZImageTextEncoder": "llm_dit.encoding.encoder"})
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
