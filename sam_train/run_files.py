"""Names of the files a run writes, declared once and importable without torch: the writers
(the callbacks) and the readers (``sam-compare``, ``sam-eval``) take them from here."""

RESULTS_NAME = "results.json"  # callbacks/results.py: final and best metrics of a complete run
METRICS_NAME = "metrics.csv"  # callbacks/metrics_csv.py: one row per epoch
EVAL_DIR = "eval"  # sam-eval: <run>/eval/<what was evaluated>.json, one file per evaluation
