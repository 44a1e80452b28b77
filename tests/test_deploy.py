"""deploy/ stays consistent with the code it ships: names, settings, images, references.

No Docker and no cluster here: every file is parsed and cross-checked against the code (served
deployments, settings fields, Prefect's own settings and project-file model, the portal's
routes), so a renamed setting or deployment fails here instead of silently in production.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import prefect
import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.settings import Settings as PrefectSettings
from prefect.settings.legacy import _get_settings_fields
from sqlalchemy.engine import make_url

from perfcycle.core.migrate import AUDIT_TRIGGERS
from perfcycle.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTINGS = {f"PERFCYCLE_{name.upper()}" for name in Settings.model_fields}
PREFECT_SETTINGS = {name for name in _get_settings_fields(PrefectSettings) if name.isupper()}
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
ENV_LINE = re.compile(r"^(#?)([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
APP_SERVICES = ("prefect-server", "flows", "portal")


# ---------------------------------------------------------------- loading


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def load_one(path: Path) -> dict[str, Any]:
    docs = load_docs(path)
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{path}: expected one YAML mapping"
    return docs[0]


def read_env_example() -> tuple[dict[str, str], set[str]]:
    """(set values, names shown commented out as optional) of deploy/.env.example."""
    active: dict[str, str] = {}
    optional: set[str] = set()
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        match = ENV_LINE.match(line)
        if match is None:
            continue
        commented, name, value = match.groups()
        if commented:
            optional.add(name)
        else:
            active[name] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return active, optional


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}, with env as deploy/.env."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator in (":?", "?"):
            raise AssertionError(f"compose.yaml needs {name}, unset in .env.example: {argument}")
        return argument or ""

    return COMPOSE_VARIABLE.sub(substitute, value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerfile_workdir() -> str:
    return [rest for keyword, rest in dockerfile_instructions() if keyword == "WORKDIR"][-1]


def k8s_docs() -> list[dict[str, Any]]:
    """The Kubernetes objects (kustomization.yaml is kustomize's, not the cluster's)."""
    paths = sorted(set(K8S.glob("*.yaml")) - {K8S / "kustomization.yaml"})
    return [doc for path in paths for doc in load_docs(path)]


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in k8s_docs()
        if doc["kind"] == "Deployment"
    }


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def check_env_names(names: set[str], where: str) -> None:
    unknown = sorted(
        name
        for name in names
        if (name.startswith("PERFCYCLE_") and name not in SETTINGS)
        or (name.startswith("PREFECT_") and name not in PREFECT_SETTINGS)
    )
    assert not unknown, (
        f"{where}: {unknown} are neither fields of perfcycle.core.settings.Settings nor Prefect "
        "settings; both ignore unknown names silently"
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_one(DEPLOY / "compose.yaml")


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return load_one(DEPLOY / "prefect.yaml")


@pytest.fixture(scope="module")
def served() -> dict[str, RunnerDeployment]:
    from perfcycle.orchestration.serve import deployments

    return {f"{d.flow_name}/{d.name}": d for d in deployments()}


# ---------------------------------------------------------------- every file


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    names = {str(path.relative_to(DEPLOY)) for path in files}
    expected = {"prefect.yaml", "compose.yaml", "k8s/kustomization.yaml", "k8s/flows.yaml"}
    assert expected <= names, f"missing: {sorted(expected - names)}"
    for path in files:
        docs = load_docs(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), f"{path}: not YAML mappings"


# ---------------------------------------------------------------- prefect.yaml


def test_prefect_yaml_passes_prefect_deploys_own_validation(project: dict[str, Any]) -> None:
    # `prefect deploy` only prints a warning and skips a file failing this model: fail here.
    model = PrefectYamlModel.model_validate(project)
    assert model.prefect_version == prefect.__version__
    lock = (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert f"\nprefect=={model.prefect_version}\n" in lock


def test_prefect_yaml_declares_exactly_the_served_deployments(
    project: dict[str, Any], served: dict[str, RunnerDeployment], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # entrypoints are relative to the repository root
    declared = {}
    for deployment in project["deployments"]:
        flow: Flow[..., Any] = load_flow_from_entrypoint(deployment["entrypoint"])
        declared[f"{flow.name}/{deployment['name']}"] = deployment
    assert sorted(declared) == sorted(served)
    for name, deployment in declared.items():
        runner = served[name]
        assert deployment["entrypoint"] == runner.entrypoint, name
        assert deployment["description"] == runner.description, name
        assert deployment["tags"] == runner.tags, name
        intervals = [timedelta(seconds=s["interval"]) for s in deployment["schedules"]]
        schedules = [s.schedule for s in runner.schedules or []]
        assert intervals == [
            s.interval if isinstance(s, IntervalSchedule) else s for s in schedules
        ], name
        assert deployment["work_pool"]["name"] == "perfcycle", name


def test_prefect_yaml_runs_flows_in_the_images_repository_root(project: dict[str, Any]) -> None:
    step = "prefect.deployments.steps.set_working_directory"
    assert project["pull"] == [{step: {"directory": dockerfile_workdir()}}]
    module, _, function = step.rpartition(".")
    assert callable(getattr(__import__(module, fromlist=[function]), function))


# ---------------------------------------------------------------- .env.example and compose


def test_env_example_lists_every_setting_and_no_other_perfcycle_name() -> None:
    active, optional = read_env_example()
    listed = {name for name in [*active, *optional] if name.startswith("PERFCYCLE_")}
    assert listed == SETTINGS, (
        f"missing: {sorted(SETTINGS - listed)}, not settings: {sorted(listed - SETTINGS)}"
    )
    check_env_names({*active, *optional}, ".env.example")


def test_compose_runs_the_four_services_from_one_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", *APP_SERVICES}
    assert services["postgres"]["image"] == "postgres:15"
    images = {services[name]["image"] for name in APP_SERVICES}
    builds = [services[name]["build"] for name in APP_SERVICES]
    assert len(images) == 1 and all(build == builds[0] for build in builds)
    assert (DEPLOY / builds[0]["context"] / builds[0]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    assert services["prefect-server"]["command"][:3] == ["prefect", "server", "start"]
    flows_command = services["flows"]["command"]
    assert flows_command[:2] == ["sh", "-c"]
    assert re.fullmatch(r"perfcycle db upgrade && (exec )?perfcycle serve", flows_command[2])
    assert services["portal"]["command"][:2] == ["perfcycle", "portal"]


def test_compose_services_are_health_checked_and_wait_for_healthy_ones(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    portal_check = " ".join(services["portal"]["healthcheck"]["test"])
    assert "/healthz" in portal_check and "/healthz" in portal_routes()


def test_compose_environment_uses_real_settings_and_passes_all_of_them(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        check_env_names(set(service.get("environment", {})), f"compose service {name}")
    for name in ("flows", "portal"):
        environment = compose["services"][name]["environment"]
        passed = {key for key in environment if key.startswith("PERFCYCLE_")}
        assert passed == SETTINGS, f"{name} lacks {sorted(SETTINGS - passed)}"
        assert environment["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_compose_variables_are_all_in_env_example_and_required_ones_set() -> None:
    active, optional = read_env_example()
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    for name, operator, _argument in COMPOSE_VARIABLE.findall(text):
        assert name in active or name in optional, f"${{{name}}} is not in .env.example"
        if operator in (":?", "?"):
            assert active.get(name), f"{name} is required by compose.yaml: set it in .env.example"


def test_pass_through_variables_are_documented(compose: dict[str, Any]) -> None:
    # A name with no value is copied from deploy/.env when set there: it must be listed.
    active, optional = read_env_example()
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if value is None:
                assert key in active or key in optional, f"{name}: {key} not in .env.example"


def test_env_example_database_urls_match_the_roles_init_sql_creates(
    compose: dict[str, Any],
) -> None:
    active, _ = read_env_example()
    services = compose["services"]
    init_sql = (DEPLOY / "postgres" / "init.sql").read_text(encoding="utf-8")
    cases = [
        ("flows", "PERFCYCLE_DATABASE_URL", "postgresql+psycopg", "DB_PASSWORD_PERFCYCLE"),
        (
            "prefect-server",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL",
            "postgresql+asyncpg",
            "DB_PASSWORD_PREFECT",
        ),
    ]
    for service, variable, driver, password in cases:
        url = make_url(interpolate(services[service]["environment"][variable], active))
        assert url.drivername == driver, variable
        assert url.host in services, f"{variable}: host {url.host} is not a compose service"
        assert url.password == active[password], f"{variable} and {password} differ"
        assert f"CREATE ROLE {url.username} LOGIN" in init_sql, url.username
        assert f"CREATE DATABASE {url.database}" in init_sql, url.database
        initdb_env = services["postgres"]["environment"]
        assert password in initdb_env


def test_postgres_init_files_are_mounted_where_initdb_sh_reads_them(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]
    mounts = dict(volume.split(":")[:2] for volume in postgres["volumes"])
    for source in mounts:
        if source.startswith("."):
            assert (DEPLOY / source).exists(), f"compose mounts missing {source}"
    initdb = (DEPLOY / "postgres" / "initdb.sh").read_text(encoding="utf-8")
    sql_dir = mounts["./postgres"]
    assert f"{sql_dir}/init.sql" in initdb
    assert any(target.startswith("/docker-entrypoint-initdb.d/") for target in mounts.values())
    used = set(re.findall(r"\$\{?([A-Z_]+)", initdb)) - {"POSTGRES_USER"}
    assert used <= set(postgres["environment"]), f"initdb.sh reads {used}"


def test_readme_names_the_append_only_triggers_it_protects() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for trigger in AUDIT_TRIGGERS["postgresql"]:
        assert trigger in readme


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_the_lock_then_the_project_without_dependencies() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    lock_install = next(
        i for i, rest in enumerate(runs) if "pip install -r requirements.lock" in rest
    )
    project_install = next(i for i, rest in enumerate(runs) if "pip install --no-deps ." in rest)
    assert lock_install < project_install
    copied = [rest.split()[:-1] for keyword, rest in instructions if keyword == "COPY"]
    sources = {source.rstrip("/") for group in copied for source in group}
    # Everything pyproject.toml builds from must be in the image.
    assert {"requirements.lock", "pyproject.toml", "README.md", "perfcycle", "flows", "tasks"} <= (
        sources
    )
    assert {"policies", "deploy/prefect.yaml"} <= sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} excluded from context"


def test_the_images_project_install_contains_every_data_file(tmp_path: Path) -> None:
    # The image installs a built copy (`pip install --no-deps .`), not the source tree: files
    # that package-data misses are absent in production though every other test passes.
    instructions = dockerfile_instructions()
    install = next(
        i for i, (_keyword, rest) in enumerate(instructions) if "pip install --no-deps ." in rest
    )
    source = tmp_path / "app"
    source.mkdir()
    for keyword, rest in instructions[:install]:
        if keyword != "COPY":
            continue
        for name in rest.split()[:-1]:
            path = REPO_ROOT / name
            if path.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(path, source / name, ignore=ignore)
            else:
                shutil.copy2(path, source / name)
    build = [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build"]
    subprocess.run(
        [*build, "--build-base", str(tmp_path / "build")],
        cwd=source,
        check=True,
        capture_output=True,
    )
    built = tmp_path / "build" / "lib"
    data_files = [
        path.relative_to(source)
        for package in ("perfcycle", "flows", "tasks")
        for path in (source / package).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and path.name != ".gitignore"
    ]
    assert data_files, "no data files found: the check would prove nothing"
    missing = sorted(str(path) for path in data_files if not (built / path).is_file())
    assert not missing, f"{len(missing)} files not installed, e.g. {missing[:3]}"


def test_dockerfile_environment_points_at_the_copied_policies() -> None:
    env = dockerfile_env()
    check_env_names(set(env), "Dockerfile")
    assert env["PERFCYCLE_POLICIES_DIR"] == f"{dockerfile_workdir()}/policies"
    assert any(file.suffix == ".yaml" for file in (REPO_ROOT / "policies").iterdir())


# ---------------------------------------------------------------- Kubernetes


def test_k8s_manifests_are_well_formed_and_all_applied_by_kustomize() -> None:
    for doc in k8s_docs():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    kustomization = load_one(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {"secret.template.yaml"}
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in k8s_docs()}
    for deployment in ("prefect-server", "flows", "portal"):
        assert ("Deployment", deployment) in kinds
    assert ("Service", "prefect-server") in kinds and ("Service", "portal") in kinds


def test_k8s_runs_every_container_from_the_one_image() -> None:
    images = {c["image"] for spec in pod_specs().values() for c in containers(spec)}
    assert len(images) == 1, images
    kustomization = load_one(K8S / "kustomization.yaml")
    assert [entry["name"] for entry in kustomization["images"]] == [images.pop().rsplit(":", 1)[0]]


def test_k8s_commands_match_compose() -> None:
    specs = pod_specs()
    assert specs["prefect-server"]["containers"][0]["command"][:3] == ["prefect", "server", "start"]
    assert specs["flows"]["initContainers"][0]["command"] == ["perfcycle", "db", "upgrade"]
    assert specs["flows"]["containers"][0]["command"] == ["perfcycle", "serve"]
    assert specs["portal"]["containers"][0]["command"][:2] == ["perfcycle", "portal"]


def test_k8s_environment_names_and_references_resolve() -> None:
    data: dict[tuple[str, str], set[str]] = {}
    for doc in k8s_docs():
        if doc["kind"] in ("ConfigMap", "Secret"):
            keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
            check_env_names(keys, f"{doc['kind']} {doc['metadata']['name']}")
            data[(doc["kind"], doc["metadata"]["name"])] = keys
    for deployment, spec in pod_specs().items():
        for container in containers(spec):
            where = f"{deployment}/{container['name']}"
            check_env_names({item["name"] for item in container.get("env", [])}, where)
            for source in container.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in source:
                        assert (kind, source[field]["name"]) in data, f"{where}: {source}"
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in data.get(("Secret", ref["name"]), set()), where


def test_k8s_services_and_probes_reach_named_ports() -> None:
    specs = pod_specs()
    labels = {
        doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
        for doc in k8s_docs()
        if doc["kind"] == "Deployment"
    }
    for doc in k8s_docs():
        if doc["kind"] != "Service":
            continue
        selector = doc["spec"]["selector"]
        targets = [name for name, pod in labels.items() if selector.items() <= pod.items()]
        assert len(targets) == 1, f"Service {doc['metadata']['name']} selects {targets}"
        ports = {p["name"] for c in specs[targets[0]]["containers"] for p in c.get("ports", [])}
        for port in doc["spec"]["ports"]:
            assert port["targetPort"] in ports, doc["metadata"]["name"]
    for deployment, spec in specs.items():
        for container in spec["containers"]:
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, f"{deployment} {probe}"
    portal_probe = specs["portal"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    assert portal_probe in portal_routes()


def portal_routes() -> set[str]:
    from perfcycle.web.app import app

    return {getattr(route, "path", "") for route in app.routes}
