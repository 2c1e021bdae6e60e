"""``hparams_search=optuna``: Hydra's Optuna sweeper, except that a search whose every trial
failed ends like any failed sweep (one line, the list of failed jobs, exit 1) instead of in
Optuna's ``ValueError: No trials are completed yet`` traceback, raised when the sweeper asks
for the best trial. Hydra instantiates sweepers from the ``hydra_plugins`` namespace only,
hence this package. Without ``uv sync --extra optuna`` it defines nothing."""

from __future__ import annotations

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _Optuna
except ImportError:  # the optional extra is not installed
    _Optuna = None

if _Optuna is not None:

    class SamTrainOptunaSweeper(_Optuna):
        def sweep(self, arguments: list[str]) -> None:
            from sam_train import cli

            try:
                return super().sweep(arguments)
            except ValueError:
                if not cli.failed_jobs:  # not our jobs' failures: Optuna's own error stands
                    raise
                cli.report_error("no trial of the search completed: there is no best trial")
                return None
