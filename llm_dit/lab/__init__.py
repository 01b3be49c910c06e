"""The interactive lab: `python -m llm_dit.cli serve`, a page and REST API over one loaded model,
whose history is an ordinary study folder (report, ab-page and TensorBoard work on it)."""

from llm_dit.lab.app import create_app
from llm_dit.lab.session import LabError, LabSession

__all__ = ["LabError", "LabSession", "create_app"]
