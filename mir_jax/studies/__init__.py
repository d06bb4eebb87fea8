"""Studies: a paper's experiment as data (`spec`), run as ordinary training workdirs (`runs`),
assembled into study.json (`collect`) with rank correlations (`correlation`), their bootstrap
intervals over seeds (`bootstrap`) and a report (`report`).
The driver is `study.py`; the shipped studies are `configs/studies/*.py`."""

from . import bootstrap, report, runs, spec
from .collect import collect, final_rows, nested_scores
from .correlation import kendall, rank_correlations, spearman
from .runs import Run, RunFailed, command, execute, plan, shell_line, status
from .spec import (
           Stage,
           Study,
           StudyError,
           Variant,
           from_dict,
           load,
           parse_set,
           with_derived,
           with_seeds,
)

__all__ = ["Run", "RunFailed", "Stage", "Study", "StudyError", "Variant", "collect", "command", "execute",
           "final_rows", "from_dict", "kendall", "load", "nested_scores", "parse_set", "plan",
           "rank_correlations", "shell_line", "spearman", "status", "with_derived", "with_seeds",
           "bootstrap", "report", "runs", "spec"]
