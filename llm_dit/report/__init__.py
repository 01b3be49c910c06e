"""Reports for finished study runs: report.md with cluster-bootstrap statistics, blind A/B pages.

from llm_dit.report import write_report, export_ab_page, read_votes
write_report("lightning_logs/hidden_layer")        # -> report.md + figures/
export_ab_page("lightning_logs/hidden_layer")      # -> ab_page.html (blind pairs)
read_votes("lightning_logs/hidden_layer")          # votes*.json -> win rates per condition
"""

from llm_dit.report.ab_page import WinRate, export_ab_page, read_votes
from llm_dit.results.run_data import RunData, load_run
from llm_dit.report.provenance import weights_are_random
from llm_dit.results.stats import Estimate, bootstrap_mean, cluster_bootstrap_mean, paired_difference
from llm_dit.report.writer import write_report

__all__ = [
    "Estimate",
    "RunData",
    "WinRate",
    "bootstrap_mean",
    "cluster_bootstrap_mean",
    "export_ab_page",
    "load_run",
    "paired_difference",
    "read_votes",
    "weights_are_random",
    "write_report",
]
