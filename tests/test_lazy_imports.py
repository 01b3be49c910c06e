"""`import llm_dit.cli`, `--help` and a misspelt subcommand load no heavy third-party package.

Each case runs in a fresh interpreter (this test process has torch loaded already) and reports
which of HEAVY ended up in sys.modules. Timings vary by machine, so this checks the cause of a
slow start (an eager import), not the time; benchmarks/NOTES.md has the measured times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each of these takes from 0.1 s to several seconds to import; none is needed to dispatch.
HEAVY = ("torch", "lightning", "diffusers", "transformers", "torchvision", "torchmetrics", "jsonargparse",
         "open_clip", "timm", "tensorboard", "matplotlib", "fastapi", "uvicorn", "scipy", "safetensors")

PROBE = """
import json, sys
{code}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def loaded_after(code: str) -> list[str]:
    """The HEAVY packages a fresh `python -c` has imported after running `code` (run from the repo root)."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_main(args: list[str]) -> str:
    """Code that runs the console entry with `args` and swallows the exit it ends with."""
    return (f"from llm_dit.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass")


@pytest.mark.parametrize("code", [
    "import llm_dit.cli",
    "import llm_dit",
    run_main(["--help"]),
    run_main(["predcit"]),  # a misspelt subcommand is answered without loading the model code
    run_main(["report", "--help"]),
    run_main(["ab-page", "--help"]),
    run_main(["hook-points", "--help"]),
], ids=["import", "import-facade", "help", "misspelt", "report-help", "ab-page-help", "hook-points-help"])
def test_dispatch_loads_no_heavy_package(code: str) -> None:
    assert loaded_after(code) == []


def test_probe_sees_an_eager_import() -> None:
    """The oracle for the checks above: an import of a listed package is seen (the lightest of them,
    safetensors, so the oracle costs no Lightning start-up)."""
    assert loaded_after("import safetensors") == ["safetensors"]


FACADES = ("llm_dit", "llm_dit.encoding")  # packages whose __init__ exports names lazily


@pytest.mark.parametrize("package", FACADES)
def test_lazy_facade_exports_resolve_to_own_modules(package: str) -> None:
    """Every lazily exported name resolves, and from inside the package: a facade must not hide an
    import of another package from the layer check (tests/test_imports.py reads imports with ast)."""
    import importlib

    module = importlib.import_module(package)
    exports = module._EXPORTS
    assert sorted(exports) == sorted(module.__all__) and set(exports) <= set(dir(module))
    for name, submodule in exports.items():
        assert submodule.startswith(package + "."), f"{package}.{name} comes from {submodule}, outside {package}"
        assert getattr(module, name) is getattr(importlib.import_module(submodule), name)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name


def test_reading_options_loads_no_model_code() -> None:
    """`report` reads settings (encoding options, sampler settings) and must not load transformers or diffusers."""
    assert not {"transformers", "diffusers", "lightning"} & set(loaded_after("import llm_dit.encoding.options"))


@pytest.mark.slow  # one interpreter importing Lightning: ~10 s on 2 CPU cores
def test_skipped_clip_score_loads_no_open_clip() -> None:
    """The study configs ship ClipScoreCallback with `pretrained: null` (skipped, with a warning): open_clip
    (and timm with it, ~1 s) is imported only when CLIP will be scored."""
    code = ("import warnings\nfrom callbacks.clip_score import ClipScoreCallback\n"
            "with warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n"
            "    assert not ClipScoreCallback(pretrained=None).enabled()")
    assert not {"open_clip", "timm"} & set(loaded_after(code))
