# The MLflow tracking server of the compose stack (docker-compose.yml, service `mlflow`): runs and metrics in
# PostgreSQL (psycopg2), artifacts proxied by the server to MinIO/S3 (boto3), and the basic-auth app for shared
# servers (the `auth` extra). Pinned to the MLflow the project's clients run (pyproject: mlflow>=3.1).
#
#   docker build -f cluster/mlflow.Dockerfile -t lamo-sweeps-mlflow:3.17.2 .
FROM python:3.11.9-slim-bookworm

RUN pip install --no-cache-dir --disable-pip-version-check \
        "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.5" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /etc/mlflow /var/lib/mlflow-auth \
    && chown mlflow /var/lib/mlflow-auth

# The basic-auth app's settings (used only with `--app-name basic-auth`): its user database lives in a volume;
# the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD (.env), never from this file.
COPY cluster/mlflow-basic-auth.ini /etc/mlflow/basic_auth.ini
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    PYTHONUNBUFFERED=1

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
