"""deploy/ checked by the real tools: hadolint, yamllint, kustomize, kubernetes-validate, promtool.

Plus the cross-file facts no single tool sees: ports, selectors, settings and user ids that must
agree between the Dockerfile, the manifests, the server's config and the rule files. No sockets
(except one refused health check), no server; the live checks are in test_observability_e2e.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
ALERTS_FILE = PROM / "rules" / "aeguard-alerts.yml"
RECORDING_FILE = PROM / "rules" / "aeguard-recording.yml"
ALERT_TESTS = PROM / "tests" / "aeguard-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "aeguard.json"
VENV_BIN = Path(sys.executable).parent
#: What the issue asks the dashboard to show, as words its panel titles must contain.
DASHBOARD_TOPICS = (
    "severity",
    "normalized score",
    "drift",
    "requests",
    "errors",
    "latency",
    "batch size",
    "versions",
)

#: The metric names agreed with the server and batch job (docs/operations.md, "Metrics"); the dashboard
#: and the rules may read only these and the recording rules built from them.
AGREED_METRICS = {
    "aeguard_rpc_requests_total",
    "aeguard_rpc_duration_seconds",
    "aeguard_rpc_in_flight",
    "aeguard_worker_processes",
    "aeguard_worker_restarts_total",
    "aeguard_samples_scored_total",
    "aeguard_anomalies_total",
    "aeguard_normalized_score",
    "aeguard_batch_size_samples",
    "aeguard_model_info",
    "aeguard_model_threshold",
    "aeguard_model_load_duration_seconds",
    "aeguard_model_reloads_total",
    "aeguard_auth_failures_total",
    "aeguard_stream_errors_total",
    "aeguard_stream_series",
    "aeguard_rpc_refusals_total",
    "aeguard_score_drift_psi",
    "aeguard_batch_rows_total",
    "aeguard_batch_anomalies_total",
    "aeguard_batch_duration_seconds",
    "aeguard_batch_last_success_timestamp_seconds",
    # `aeguard watch` (service/metrics/watch.py, docs/watch.md)
    "aeguard_watch_normalized_score",
    "aeguard_watch_score",
    "aeguard_watch_severity_level",
    "aeguard_watch_anomaly",
    "aeguard_watch_score_timestamp_seconds",
    "aeguard_watch_top_feature_share",
    "aeguard_watch_model_threshold",
    "aeguard_watch_model_info",
    "aeguard_watch_queries_total",
    "aeguard_watch_query_duration_seconds",
    "aeguard_watch_cycles_total",
    "aeguard_watch_cycle_duration_seconds",
    "aeguard_watch_groups",
    "aeguard_watch_rows_skipped_total",
    "aeguard_watch_model_failures_total",
    "aeguard_watch_scores_expired_total",
    "aeguard_watch_last_success_timestamp_seconds",
    "aeguard_watch_model_reloads_total",
}


# -- helpers -------------------------------------------------------------------------------------
def tool(name: str) -> str:
    """A tool from the venv (PyPI wheels) or the system (Debian packages); fail if missing."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed (the dev extra or .ci/run installs it)"
    return found


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], dict]:
    """``kubectl kustomize deploy/k8s``, by (kind, name)."""
    result = run(tool("kubectl"), "kustomize", str(K8S))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container(workload: dict) -> dict:
    spec = workload["spec"]
    pod = (
        spec["jobTemplate"]["spec"]["template"]["spec"]
        if workload["kind"] == "CronJob"
        else spec["template"]["spec"]
    )
    (only,) = pod["containers"]
    return only


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def recording_names() -> set[str]:
    return {r["record"] for g in read_yaml(RECORDING_FILE)["groups"] for r in g["rules"] if "record" in r}


def alerts() -> list[dict]:
    return [r for g in read_yaml(ALERTS_FILE)["groups"] for r in g["rules"]]


# -- container -----------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_and_torch_free() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2 and " AS build" in froms[0], "a build stage and a runtime stage"
    assert "slim" in text.split("PYTHON_IMAGE=")[1].split()[0]
    final = lines[lines.index(froms[-1]) :]
    # Stubs are generated in the build stage by `pip install .` (the build backend runs protoc in pip's
    # isolated build environment, see pyproject.toml), never in the runtime image.
    build_stage = lines[: lines.index(froms[-1])]
    assert any("pip install" in ln and " ." in ln for ln in build_stage)
    assert 'build-backend = "aeguard_build"' in (ROOT / "pyproject.toml").read_text()
    assert not any("grpc_tools" in ln or "grpcio-tools" in ln for ln in final)
    # Serving dependencies only: a plain `pip install .`, no extras, no torch.
    installs = [ln for ln in lines if "pip install" in ln and " ." in ln]
    assert installs and not any("[" in ln.split("pip install", 1)[1] for ln in installs)
    assert not any("torch" in ln for ln in lines)
    user = next(ln for ln in reversed(final) if ln.startswith("USER ")).split()[1]
    assert user.split(":")[0] not in ("0", "root")
    healthcheck = next(ln for ln in final if ln.startswith("HEALTHCHECK "))
    assert "healthcheck.py" in healthcheck


def test_dockerignore_admits_every_copied_path_and_nothing_generated() -> None:
    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "**", "start from an empty context and admit what the image needs"
    admitted = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    text = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE)
    sources = [src.rstrip("/") for line in copies for src in line.split()[:-1]]
    assert sources
    for src in sources:
        assert src in admitted, f".dockerignore keeps {src} (copied by the Dockerfile) out of the context"
        assert (ROOT / src).exists(), src
    assert "service/rpc/api/" in rules, "generated stubs are rebuilt in the image, not copied"


def test_healthcheck_reports_unhealthy_when_nothing_listens() -> None:
    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")],
        env={"AEGUARD_PORT": str(port), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "unhealthy: UNAVAILABLE" in result.stderr


# -- YAML ----------------------------------------------------------------------------------------
def test_yaml_files_pass_yamllint() -> None:
    result = run(tool("yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY))
    assert result.returncode == 0, result.stdout + result.stderr


# -- Kubernetes ----------------------------------------------------------------------------------
def test_kustomize_renders_every_listed_resource(rendered: dict) -> None:
    listed = read_yaml(K8S / "kustomization.yaml")["resources"]
    in_files = {
        (d["kind"], d["metadata"]["name"])
        for f in listed
        for d in yaml.safe_load_all((K8S / f).read_text())
        if d
    }
    assert set(rendered) == in_files
    for kind in (
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "CronJob",
        "ServiceMonitor",
        "PrometheusRule",
        "StatefulSet",
    ):
        assert any(k == kind for k, _ in rendered), f"no {kind} in the base"
    assert all(
        d["metadata"].get("namespace") == "aeguard" for (k, _), d in rendered.items() if k != "Namespace"
    )


# The oldest Kubernetes the README promises (native gRPC probes, preStop sleep) and the newest known.
@pytest.mark.parametrize("k8s_version", ["1.30.0", "1.37.0"])
def test_core_objects_pass_kubernetes_validate_strict(
    rendered: dict, tmp_path: Path, k8s_version: str
) -> None:
    core = [d for d in rendered.values() if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    manifest = tmp_path / "core.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    result = run(tool("kubernetes-validate"), "--strict", "-k", k8s_version, str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(core), result.stdout


def test_kubernetes_validate_strict_rejects_an_unknown_field(rendered: dict, tmp_path: Path) -> None:
    """The validator really is strict: a misspelt field fails (so the test above can fail)."""
    deployment = json.loads(json.dumps(rendered["Deployment", "aeguard"]))
    container(deployment)["securityContext"]["readOnlyRootFileSystem"] = True
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    result = run(tool("kubernetes-validate"), "--strict", str(manifest))
    assert result.returncode != 0 and "readOnlyRootFileSystem" in result.stdout + result.stderr


def test_deployment_settings_agree_with_the_server_config(rendered: dict) -> None:
    from service.config import ENV_PREFIX, ServerConfig

    deployment = rendered["Deployment", "aeguard"]
    c = container(deployment)
    env = env_of(c)
    fields = {ENV_PREFIX + f.name.upper(): f for f in dataclasses.fields(ServerConfig)}
    unknown = set(env) - set(fields)
    assert not unknown, f"not settings of `aeguard serve`: {unknown}"
    # Every value parses as the server would parse it.
    config = ServerConfig.from_sources({}, environ=env)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port, "health": config.health_port}
    assert config.host == "0.0.0.0", "a container must listen beyond loopback"
    # TLS and tokens on the gRPC port, so the native gRPC probes ask the plaintext health-only port.
    assert config.tls_cert and config.tls_key and config.auth_tokens_file
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == config.health_port, probe
    assert c["readinessProbe"]["grpc"]["service"] == "aeguard.v1.AnomalyDetector"
    # Kubernetes must not kill the pod while it drains.
    pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop_s + config.grace_s
    # The model comes from a read-only volume at the configured path.
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == config.model)
    assert mount["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] in {
        n for k, n in rendered if k == "PersistentVolumeClaim"
    }
    # The TLS and token files come from the Secrets that secrets.example.yaml shows how to make.
    secrets = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    }
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for setting in (config.tls_cert, config.tls_key, config.auth_tokens_file):
        path = Path(setting)
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
        assert mount["readOnly"] is True
        secret = secrets[volumes[mount["name"]]["secret"]["secretName"]]
        assert path.name in secret["stringData"], (
            f"{setting} is not a key of Secret {secret['metadata']['name']}"
        )


@pytest.mark.parametrize("example", ["secrets.example.yaml", "publish-model.example.yaml"])
def test_example_manifests_pass_kubernetes_validate_strict(example: str) -> None:
    result = run(tool("kubernetes-validate"), "--strict", str(K8S / example))
    assert result.returncode == 0, result.stdout + result.stderr
    docs = [d for d in yaml.safe_load_all((K8S / example).read_text()) if d]
    assert result.stdout.count("passed for resource") == len(docs), result.stdout


def test_the_publish_example_writes_beside_then_renames() -> None:
    job = read_yaml(K8S / "publish-model.example.yaml")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    copy, check, rename = (line.strip() for line in script.split(";")[1:4])
    assert copy.startswith("cp ") and copy.endswith("/models/.model.onnx.partial")
    assert check.startswith("aeguard inspect /models/.model.onnx.partial")
    assert rename == "mv /models/.model.onnx.partial /models/model.onnx"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "aeguard-models"


@pytest.mark.parametrize(
    "kind,name",
    [
        ("Deployment", "aeguard"),
        ("CronJob", "aeguard-score"),
        ("StatefulSet", "aeguard-watch"),
        ("CronJob", "aeguard-watch-retrain"),
    ],
)
def test_workloads_are_locked_down_and_sized(rendered: dict, kind: str, name: str) -> None:
    workload = rendered[kind, name]
    pod = pod_spec(workload)["spec"]
    c = container(workload)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][part]), part
    # The same non-root user as the image.
    text = (DEPLOY / "Dockerfile").read_text()
    image_uid = int(re.findall(r"^USER (\d+)", text, flags=re.MULTILINE)[-1])
    assert pod["securityContext"]["runAsUser"] == image_uid
    # A writable /tmp, since the root filesystem is read-only.
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])


def test_selectors_and_references_agree(rendered: dict) -> None:
    deployment = rendered["Deployment", "aeguard"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = rendered["Service", "aeguard"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    pdb = rendered["PodDisruptionBudget", "aeguard"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = rendered["HorizontalPodAutoscaler", "aeguard"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "aeguard"}
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    server_policy = rendered["NetworkPolicy", "aeguard-server"]
    assert server_policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = {p["port"] for rule in server_policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == container_ports
    cron = rendered["CronJob", "aeguard-score"]
    batch_policy = rendered["NetworkPolicy", "aeguard-batch"]
    cron_labels = pod_spec(cron)["metadata"]["labels"]
    assert batch_policy["spec"]["podSelector"]["matchLabels"].items() <= cron_labels.items()
    assert not server_policy["spec"]["podSelector"]["matchLabels"].items() <= cron_labels.items()
    for workload in (deployment, cron):
        sa = pod_spec(workload)["spec"]["serviceAccountName"]
        assert ("ServiceAccount", sa) in rendered


def test_service_monitor_scrapes_the_metrics_port_as_job_aeguard(rendered: dict) -> None:
    monitor = rendered["ServiceMonitor", "aeguard"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "jobLabel", "namespaceSelector"}
    service = rendered["Service", "aeguard"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # With no jobLabel the operator names the job after the Service: what the alerts select.
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == "aeguard"
    assert all('up{job="aeguard"}' in a["expr"] for a in alerts() if "up{" in a["expr"])


def test_prometheus_rule_carries_exactly_the_rule_files(rendered: dict, tmp_path: Path) -> None:
    sync = load_module(PROM / "sync_prometheusrule.py")
    check = run(sys.executable, str(PROM / "sync_prometheusrule.py"), "--check")
    assert check.returncode == 0, check.stderr
    rule = rendered["PrometheusRule", "aeguard"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == sync.rule_groups()
    # The embedded groups are valid rules in their own right.
    extracted = tmp_path / "embedded.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = run(tool("promtool"), "check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_cronjob_command_is_a_valid_aeguard_score_invocation(rendered: dict) -> None:
    from service.batch.cli import config_from_args
    from service.cli import build_parser

    c = container(rendered["CronJob", "aeguard-score"])
    assert c["command"] == ["/bin/sh", "-c"]
    words = shlex.split(c["args"][0])
    # `aeguard score` refuses an output directory that does not exist: the job creates it first.
    assert words[:3] == ["mkdir", "-p", "/data/output"] and words[3] == "&&"
    words = words[4:]
    assert words[:2] == ["exec", "aeguard"]
    argv = words[2:]
    args = build_parser(argv).parse_args(argv)
    config = config_from_args(args)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert Path(config.model_path).parent.as_posix() in mounts
    assert mounts[Path(config.model_path).parent.as_posix()]["readOnly"] is True
    assert config.pushgateway, "the staleness alert needs the job's metrics"
    assert any(config.output_path.startswith(p) and not m.get("readOnly") for p, m in mounts.items())
    assert Path(config.output_path).parent == Path("/data/output")


def test_watch_statefulset_settings_agree_with_watch_settings(rendered: dict) -> None:
    from service.config import ENV_PREFIX, settings_from_sources
    from service.watch.config import WatchSettings
    from service.watch.main import settings_from_args

    workload = rendered["StatefulSet", "aeguard-watch"]
    c = container(workload)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    fields = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(WatchSettings)}
    assert set(env) <= fields, f"not settings of `aeguard watch`: {set(env) - fields}"
    settings = settings_from_sources(WatchSettings, {}, environ=env)
    assert settings.host == "0.0.0.0" and settings.model == "/models"
    # The shard comes from the pod's ordinal; N must be the replica count.
    (pod_index,) = [e for e in c["env"] if e["name"] == "POD_INDEX"]
    assert (
        pod_index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert c["args"][:2] == ["watch", "--shard"]
    replicas = workload["spec"]["replicas"]
    assert c["args"][2] == f"$(POD_INDEX)/{replicas}"
    from service.cli import build_parser

    for i in range(replicas):
        argv = [*c["args"][:2], c["args"][2].replace("$(POD_INDEX)", str(i))]
        args = build_parser(argv).parse_args(argv)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            assert settings_from_args(args).shard_index == (i, replicas)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": settings.metrics_port}
    service = rendered["Service", "aeguard-watch"]
    assert service["spec"]["clusterIP"] == "None" and workload["spec"]["serviceName"] == "aeguard-watch"
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = rendered["ServiceMonitor", "aeguard-watch"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True, "keeps the watched groups' instance label"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "aeguard-watch-models"
    policy = rendered["NetworkPolicy", "aeguard-watch"]
    selected = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert pod_labels["app.kubernetes.io/component"] in selected


def test_watch_retrain_cronjob_trains_from_prometheus_and_publishes_by_rename(rendered: dict) -> None:
    from service.cli import build_parser
    from training.cli.train import _check_args

    cron = rendered["CronJob", "aeguard-watch-retrain"]
    c = container(cron)
    assert c["image"].startswith("aeguard-train"), "training needs torch: not the serving image"
    steps = [s.strip() for s in c["args"][0].split(";") if s.strip()]
    assert steps[0] == "set -e"
    train, inspect, publish = (shlex.split(s) for s in steps[1:])
    assert train[:2] == ["aeguard", "train"]
    args = build_parser(train[1:]).parse_args(train[1:])
    _check_args(args)
    assert args.prometheus and args.query and args.group_by == "instance"
    partial = Path(args.out)
    assert partial.name.startswith(".") and not partial.name.endswith(".onnx"), "watch must not load it"
    assert inspect == ["aeguard", "inspect", args.out]
    assert publish[:2] == ["mv", args.out] and Path(publish[2]).parent == partial.parent
    assert publish[2].endswith(".onnx")
    volumes = {v["name"]: v for v in pod_spec(cron)["spec"]["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    watch_volumes = rendered["StatefulSet", "aeguard-watch"]["spec"]["template"]["spec"]["volumes"]
    assert (
        claim == next(v for v in watch_volumes if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    )
    mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert mount["mountPath"] == str(partial.parent) and not mount.get("readOnly")


# -- Prometheus ----------------------------------------------------------------------------------
def test_rule_files_pass_promtool_check() -> None:
    result = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    n_rules = sum(len(g["rules"]) for f in RULE_FILES for g in read_yaml(f)["groups"])
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert found == n_rules


def test_alert_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", str(ALERT_TESTS), cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in read_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"


def test_alerts_carry_severity_and_guidance() -> None:
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]
        assert alert["alert"].startswith("Aeguard")


def test_rules_read_only_agreed_metrics_and_defined_recordings() -> None:
    recordings = recording_names()
    for path in RULE_FILES:
        for group in read_yaml(path)["groups"]:
            for rule in group["rules"]:
                assert_names_known(rule["expr"], recordings)


def assert_names_known(expr: str, recordings: set[str]) -> None:
    recorded = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
    for name in recorded.findall(expr):
        assert name in recordings, f"{name} is not a recording rule"
    for name in re.findall(r"\baeguard_[a-z_]+\b", recorded.sub("", expr)):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in AGREED_METRICS or base in AGREED_METRICS, f"{name} is not an agreed metric"


def test_prometheus_config_is_valid_and_loads_the_rules(tmp_path: Path) -> None:
    config = read_yaml(PROM / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["aeguard"]["static_configs"][0]["targets"] == ["aeguard:9464"]
    assert jobs["pushgateway"]["honor_labels"] is True, "keeps the batch job's job label"
    assert jobs["aeguard-watch"]["honor_labels"] is True, "keeps the watched groups' instance label"
    # Point rule_files at this checkout (compose mounts them at /etc/prometheus/rules).
    config["rule_files"] = [str(PROM / "rules" / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = run(tool("promtool"), "check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


# -- Grafana -------------------------------------------------------------------------------------
def test_dashboard_panels_are_complete() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    panels = doc["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "model"} <= variables
    for panel in panels:
        assert {"type", "title", "gridPos"} <= set(panel), panel.get("title")
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel.get("description"), panel["title"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for topic in DASHBOARD_TOPICS:
        assert topic in titles, f"no panel about {topic}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    pq = load_module(DEPLOY / "grafana" / "panel_queries.py")
    queries = pq.panel_queries(DASHBOARD)
    assert len(queries) >= 20
    recordings = recording_names()
    for q in queries:
        assert "$" not in q.expr, f"{q.panel}: unsubstituted variable in {q.expr}"
        assert_names_known(q.expr, recordings)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}:query", "expr": q.expr} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_and_compose_agree() -> None:
    compose = read_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"aeguard", "prometheus", "grafana"} <= set(services)
    build = services["aeguard"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    # Every bind mount but the user's model folder points at a file or folder of this checkout.
    mounts = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts[target] = DEPLOY / source
                if name != "aeguard":
                    assert (DEPLOY / source).exists(), f"{name}: {source}"
    datasources = read_yaml(mounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yaml")
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = read_yaml(mounts["/etc/grafana/provisioning"] / "dashboards" / "aeguard.yaml")["providers"]
    path = providers[0]["options"]["path"]
    assert (mounts[path] / DASHBOARD.name).exists(), "the provider's folder holds the dashboard"
    assert mounts["/etc/prometheus/rules"].resolve() == (PROM / "rules").resolve()
    env = services["aeguard"].get("environment", {})
    assert env.get("AEGUARD_MODEL") == "/models"
    assert any(v.endswith(":/models:ro") for v in services["aeguard"]["volumes"])
