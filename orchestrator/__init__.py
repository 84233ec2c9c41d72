"""The sweep's driver side: the spec, its plan, the trials Tune runs, their tracking and the aggregator."""

import os

# MLflow's client telemetry is off unless asked for (MLFLOW_DISABLE_TELEMETRY=false). Besides sending usage data
# off the cluster, it failed requests at scale: where its endpoint cannot be reached, its "GetTelemetryConfig"
# thread removes _MLFLOW_TELEMETRY_SESSION_ID from os.environ while another thread's HTTP request is reading the
# environment for proxies, and that request fails with KeyError '_MLFLOW_TELEMETRY_SESSION_ID' (seen on a trial's
# first log_batch in bench/paper_miniature.py; MLflow 3.18). Set before any orchestrator module imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
