"""Static checks of the deployment files (no Docker engine or cloud account needed).

- docker-compose.yml against the Compose Specification's JSON schema (test data in ../shared/schemas, not part
  of the project) and the project's rules: ports on 127.0.0.1, a healthcheck or dependency condition on every
  service, pinned images, Ray token authentication, no secret without an .env.example placeholder;
- cluster/aws.yaml and cluster/gcp.yaml through Ray's own config validation (ray/autoscaler/ray-schema.json
  and the launcher's default filling), plus head/worker rules: CPU-0 head with trial slots, GPU workers from 0;
- the KubeRay RayCluster/RayJob: the fields a RayJob needs to run a sweep on an ephemeral cluster;
- one Ray version everywhere: pyproject, Dockerfile base image, compose, cluster YAMLs, KubeRay manifests.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_SCHEMA = Path(__file__).resolve().parents[2] / "shared/schemas/compose-spec.json"
CLOUD_YAMLS = ["cluster/aws.yaml", "cluster/gcp.yaml"]
KUBERAY = ROOT / "cluster/kuberay"
PROJECT_IMAGE = re.compile(r"(^|/)lamo-sweeps:(?P<project>[\w.]+)-ray(?P<ray>\d+\.\d+\.\d+)$")
TOKEN_PLACEHOLDER = "CHANGE-ME"


def load_yaml(relative: str):
    return yaml.safe_load((ROOT / relative).read_text())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned_version(requirement_prefix: str) -> str:
    """The exact version pyproject pins for a dependency, e.g. 'ray[...]==2.60.0' -> '2.60.0'."""
    for requirement in pyproject()["project"]["dependencies"]:
        requirement = requirement.split(";")[0].strip()
        match = re.fullmatch(rf"{re.escape(requirement_prefix)}(\[[^\]]*\])?==([\w.]+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {requirement_prefix} exactly")


RAY_VERSION = pinned_version("ray")


# --- the image --------------------------------------------------------------------------------------------

def dockerfile_bases(path: Path) -> list[str]:
    return [line.split()[1] for line in path.read_text().splitlines() if line.strip().upper().startswith("FROM ")]


def test_dockerfile_base_is_rays_gpu_image_for_the_projects_ray_and_python():
    bases = dockerfile_bases(ROOT / "cluster/Dockerfile")
    assert len(bases) == 1, bases
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)(@sha256:[0-9a-f]{64})?", bases[0])
    assert match, f"cluster/Dockerfile: expected a pinned rayproject/ray GPU tag, got {bases[0]}"
    ray_version, major, minor = match.group(1), match.group(2), match.group(3)
    assert ray_version == RAY_VERSION, f"base image has Ray {ray_version}, pyproject pins {RAY_VERSION}"
    python = Version(f"{major}.{minor}")
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    assert python in requires, f"base image Python {python} does not satisfy requires-python {requires}"
    lowest = min(Version(s.version) for s in requires if s.operator in (">=", "=="))
    assert python.release[:2] == lowest.release[:2], f"base image Python {python}, the project's is {lowest}"


def test_dockerfile_installs_the_project_and_checks_its_ray():
    text = (ROOT / "cluster/Dockerfile").read_text()
    assert re.search(r"pip install (--[\w-]+ )*\.(\s|$)", text), "the image must `pip install .` (not -e)"
    assert "pip install -e" not in text
    assert f"ray.__version__ == '{RAY_VERSION}'" in text, "the build should fail when the base image's Ray differs"


def test_mlflow_image_pins_a_server_that_matches_the_project():
    text = (ROOT / "cluster/mlflow.Dockerfile").read_text()
    (base,) = dockerfile_bases(ROOT / "cluster/mlflow.Dockerfile")
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    pins = dict(re.findall(r'"([\w\-]+)(?:\[[\w,]+\])?==([\w.]+)"', text))
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(pins), pins
    assert '"mlflow[auth]==' in text, "the basic-auth app needs mlflow's `auth` extra (Flask-WTF)"
    project_spec = next(r for r in pyproject()["project"]["dependencies"] if r.startswith("mlflow"))
    specifier = SpecifierSet(re.sub(r"^mlflow(\[[^\]]*\])?", "", project_spec.split("#")[0]).strip())
    assert Version(pins["mlflow"]) in specifier, f"server mlflow {pins['mlflow']} outside the project's {specifier}"
    import mlflow

    assert Version(pins["mlflow"]).major == Version(mlflow.__version__).major, "server and client MLflow majors differ"
    compose_image = load_yaml("docker-compose.yml")["services"]["mlflow"]["image"]
    assert compose_image.endswith(f":{pins['mlflow']}"), compose_image


# --- docker-compose.yml -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml("docker-compose.yml")


def test_compose_validates_against_the_compose_specification(compose):
    jsonschema = pytest.importorskip("jsonschema")
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"Compose Specification schema not found at {COMPOSE_SCHEMA} (test data outside the project)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def published_ports(service: dict) -> list[str | dict]:
    return service.get("ports", [])


def test_compose_publishes_ports_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in published_ports(service):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port} must set host_ip: 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port!r} must be bound to 127.0.0.1"
        assert "network_mode" not in service or service["network_mode"] != "host", f"{name}: host networking"
    published = {name for name, s in compose["services"].items() if published_ports(s)}
    assert {"ray-head", "mlflow"} <= published, published
    assert not published & {"postgres", "ray-worker", "ray-worker-gpu"}, "internal services publish no ports"


def test_compose_every_service_has_a_healthcheck_or_a_dependency_condition(compose):
    for name, service in compose["services"].items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form with conditions"
        for dependency, spec in depends.items():
            assert dependency in compose["services"], f"{name} depends on unknown service {dependency}"
            assert spec.get("condition") in ("service_healthy", "service_completed_successfully"), \
                f"{name} -> {dependency}: condition {spec.get('condition')!r}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in compose["services"][dependency], f"{dependency} has no healthcheck"
        assert "healthcheck" in service or depends, f"{name}: neither a healthcheck nor a dependency condition"
        if "healthcheck" in service:
            assert service["healthcheck"].get("test"), f"{name}: empty healthcheck"


def test_compose_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: every service names its image (built ones too, so the tag is pinned)"
        repository, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert repository and tag and tag != "latest" and "/" not in tag, f"{name}: unpinned image {image}"
        assert "$" not in image, f"{name}: image tag from a variable is not pinned"


def test_compose_ray_nodes_run_the_project_image_with_token_auth(compose):
    ray_services = {n: s for n, s in compose["services"].items() if n.startswith("ray-")}
    assert {"ray-head", "ray-worker"} <= set(ray_services)
    for name, service in ray_services.items():
        assert service["build"]["dockerfile"] == "cluster/Dockerfile", name
        match = PROJECT_IMAGE.search(service["image"])
        assert match and match["ray"] == RAY_VERSION, f"{name}: image {service['image']} vs Ray {RAY_VERSION}"
        assert match["project"] == pyproject()["project"]["version"], service["image"]
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), f"{name}: the token must be required"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["LAMO_SWEEPS_STORAGE"].startswith("s3://ray-results/"), name
        assert service["command"][:2] == ["ray", "start"] and "--block" in service["command"], name
    head = ray_services["ray-head"]["command"]
    assert "--head" in head and "--num-cpus=0" in head, "no tasks on the head"
    for name, service in ray_services.items():
        resources = next(a for a in service["command"] if a.startswith("--resources="))
        assert json.loads(resources.removeprefix("--resources="))["trial_slot"] > 0, name
    gpu = ray_services["ray-worker-gpu"]
    assert gpu.get("profiles") == ["gpu"], "the GPU worker is opt-in"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_ray_storage_uri_resolves_to_minio():
    """pyarrow ignores AWS_ENDPOINT_URL, so the MinIO endpoint must travel in the storage URI itself."""
    import pyarrow.fs

    uri = load_yaml("docker-compose.yml")["x-ray-node"]["environment"]["LAMO_SWEEPS_STORAGE"]
    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    assert isinstance(filesystem, pyarrow.fs.S3FileSystem) and path == "ray-results/sweeps"
    settings = filesystem.__reduce__()[1][0]
    assert settings["endpoint_override"] == "minio:9000" and settings["scheme"] == "http", settings


def test_compose_mlflow_server_uses_postgres_minio_and_allowed_hosts(compose):
    mlflow = compose["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    for flag in ("--backend-store-uri", "--artifacts-destination s3://mlflow/", "--serve-artifacts",
                 "--allowed-hosts", "--host 0.0.0.0"):
        assert flag in command, f"mlflow server command lacks {flag}"
    env = mlflow["environment"]
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the image ships psycopg2.
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://"), env["MLFLOW_BACKEND_STORE_URI"]
    assert "@postgres:5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "mlflow:5000" in env["MLFLOW_ALLOWED_HOSTS"].split(","), "Ray nodes reach the server as mlflow:5000"
    assert "--app-name" in command and "MLFLOW_AUTH" in env, "the basic-auth app can be switched on from .env"
    assert set(mlflow["depends_on"]) == {"postgres", "minio-init"}
    init = " ".join(compose["services"]["minio-init"]["command"])
    assert "local/mlflow" in init and "local/ray-results" in init, "buckets for artifacts and Ray results"
    assert compose["services"]["minio-init"]["restart"] == "no"


def compose_variables(text: str) -> dict[str, set[str]]:
    """${NAME}, ${NAME:-default}, ${NAME:?error} -> {NAME: {"", ":-", ":?"}} (escaped $${...} excluded)."""
    uses: dict[str, set[str]] = {}
    for name, operator in re.findall(r"(?<!\$)\$\{(\w+)(:?[-?+])?", text):
        uses.setdefault(name, set()).add(operator)
    return uses


def test_env_example_defines_every_required_variable_and_no_real_secret():
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    variables = compose_variables((ROOT / "docker-compose.yml").read_text())
    required = {name for name, operators in variables.items() if operators & {"", ":?", "?"}}
    assert required, variables
    missing = sorted(required - set(example))
    assert not missing, f".env.example lacks {missing}, which docker-compose.yml needs"
    for key, value in example.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", key):
            assert value == "" or TOKEN_PLACEHOLDER in value, f".env.example: {key} must be a placeholder"


# --- Ray cluster launcher YAMLs ---------------------------------------------------------------------------

@pytest.fixture(scope="module", params=CLOUD_YAMLS)
def cloud(request) -> tuple[str, dict]:
    return request.param, load_yaml(request.param)


def test_cloud_yaml_passes_rays_validation(cloud):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    _, config = cloud
    validate_config(config)  # ray-schema.json + head_node_type + sum(min_workers) <= max_workers
    validate_config(prepare_config(copy.deepcopy(config)))  # after `ray up`'s default filling


def test_cloud_yaml_node_types(cloud):
    name, config = cloud
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, f"{name}: no tasks on the head"
    assert head["resources"].get("trial_slot", 0) > 0, f"{name}: the head hosts trial drivers"
    assert "GPU" not in head["resources"] or head["resources"]["GPU"] == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers, name
    for worker_name, worker in workers.items():
        low, high = worker.get("min_workers", 0), worker["max_workers"]
        assert 0 <= low <= high <= config["max_workers"], f"{name}/{worker_name}: min {low}, max {high}"
        assert low == 0, f"{name}/{worker_name}: GPU workers scale from zero"
        assert worker["resources"].get("trial_slot", 0) > 0, f"{name}/{worker_name}: needs trial_slot"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start, f"{name}: ray start --head must not offer CPUs"
    slots = json.loads(re.search(r"--resources='([^']+)'", head_start).group(1))
    assert slots["trial_slot"] == head["resources"]["trial_slot"], f"{name}: head trial_slot disagrees"
    assert "--dashboard-host=0.0.0.0" not in head_start, f"{name}: dashboard only via `ray dashboard` tunnel"


def test_cloud_yaml_every_node_gets_image_tracking_storage_and_token(cloud):
    name, config = cloud
    docker = config["docker"]
    match = PROJECT_IMAGE.search(docker["image"])
    assert match and match["ray"] == RAY_VERSION, f"{name}: image {docker['image']}"
    assert not any("image" in t.get("docker", {}) or "worker_image" in t.get("docker", {})
                   for t in config["available_node_types"].values()), f"{name}: one image for every node"
    env = dict(option.removeprefix("--env ").split("=", 1) for option in docker["run_options"]
               if option.startswith("--env "))
    assert env["RAY_AUTH_MODE"] == "token", name
    assert env["MLFLOW_TRACKING_URI"].startswith("http"), name
    scheme = {"aws": "s3://", "gcp": "gs://"}[config["provider"]["type"]]
    assert env["LAMO_SWEEPS_STORAGE"].startswith(scheme), f"{name}: Ray results on {scheme}"
    assert any(remote.endswith("/.ray/auth_token") for remote in config["file_mounts"]), f"{name}: token mount"
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, f"{name}: {command}"


# The ports Ray nodes open to each other (Ray's "Configuring Ray" port list); each one pinned so a firewall or
# security group can allow exactly these between the cluster's nodes, and listed in the README's port table.
INTER_NODE_PORT_FLAGS = ("--object-manager-port", "--node-manager-port", "--dashboard-agent-grpc-port",
                         "--dashboard-agent-listen-port", "--metrics-export-port", "--min-worker-port",
                         "--max-worker-port")


def test_cloud_yaml_pins_every_port_nodes_reach_and_the_readme_lists_them(cloud):
    name, config = cloud
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    readme = (ROOT / "README.md").read_text()
    for flag in INTER_NODE_PORT_FLAGS:
        pinned = {re.search(rf"{flag}=(\d+)", command).group(1) if re.search(rf"{flag}=(\d+)", command) else None
                  for command in (head, workers)}
        assert len(pinned) == 1 and None not in pinned, f"{name}: {flag} pinned alike on head and workers: {pinned}"
        assert f"`{flag}={pinned.pop()}`" in readme, f"README's port table lacks {flag}"
    assert "--port=6379" in head and "$RAY_HEAD_IP:6379" in workers and "`--port=6379`" in readme
    assert "--dashboard-host=127.0.0.1" in head, f"{name}: the Jobs port (8265) stays on the head's loopback"


# --- KubeRay ----------------------------------------------------------------------------------------------

def kuberay_documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def cluster_specs() -> list[tuple[str, dict]]:
    (cluster,) = kuberay_documents("raycluster.yaml")
    (job,) = kuberay_documents("rayjob.yaml")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    return [("raycluster.yaml", cluster["spec"]), ("rayjob.yaml", job["spec"]["rayClusterSpec"])]


@pytest.mark.parametrize("name,spec", cluster_specs())
def test_kuberay_cluster_spec(name, spec):
    assert spec["rayVersion"] == RAY_VERSION, name
    assert spec["authOptions"]["mode"] == "token", f"{name}: Ray token authentication"
    assert spec["enableInTreeAutoscaling"] is True, name
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", f"{name}: no tasks on the head"
    groups = [("head", head)] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for group_name, group in groups:
        # KubeRay's documented format: a JSON object inside a quoted string.
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert resources["trial_slot"] > 0, f"{name}/{group_name}"
        pod = group["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            match = PROJECT_IMAGE.search(container["image"])
            assert match and match["ray"] == RAY_VERSION, f"{name}/{group_name}: {container['image']}"
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert {"MLFLOW_TRACKING_URI", "LAMO_SWEEPS_STORAGE", "D4RL_DATASET_DIR"} <= set(env), group_name
    for group in spec["workerGroupSpecs"]:
        assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", group["groupName"]


def test_kuberay_rayjob_runs_a_sweep_and_deletes_its_cluster():
    (job,) = kuberay_documents("rayjob.yaml")
    spec = job["spec"]
    assert re.search(r"python orchestrator/sweep\.py --spec sweeps/\S+\.yaml", spec["entrypoint"])
    spec_file = re.search(r"--spec (\S+)", spec["entrypoint"]).group(1)
    assert (ROOT / spec_file).is_file(), f"the RayJob runs {spec_file}, which the image would not contain"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")
    assert "clusterSelector" not in spec, "an ephemeral cluster, not an existing one"


def test_dockerfile_workdir_is_where_the_rayjob_runs():
    workdir = re.search(r"^WORKDIR (\S+)", (ROOT / "cluster/Dockerfile").read_text(), re.MULTILINE).group(1)
    (job,) = kuberay_documents("rayjob.yaml")
    assert job["spec"]["entrypoint"].startswith(f"cd {workdir} && ")


# --- one Ray version --------------------------------------------------------------------------------------

def test_one_ray_version_everywhere():
    found = {"pyproject.toml": {RAY_VERSION}}
    for relative in ["cluster/Dockerfile", "docker-compose.yml", *CLOUD_YAMLS,
                     "cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml"]:
        text = (ROOT / relative).read_text()
        versions = set(re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", text))
        versions |= set(re.findall(r"lamo-sweeps:[\w.]+-ray(\d+\.\d+\.\d+)", text))
        versions |= set(re.findall(r"rayVersion:\s*[\"']?(\d+\.\d+\.\d+)", text))
        versions |= set(re.findall(r"ray\.__version__ == '(\d+\.\d+\.\d+)'", text))
        assert versions, f"{relative} names no Ray version"
        found[relative] = versions
    assert all(v == {RAY_VERSION} for v in found.values()), found
