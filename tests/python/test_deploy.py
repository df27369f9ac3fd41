"""Checks of `deploy/`: the files operators run (Dockerfile, compose stack, Prometheus
rules, Grafana dashboard, Kubernetes manifests, configuration files) parse, name only
files that exist, use only configuration keys the server accepts and only metric names
and labels the server exposes, and agree with each other (ports, paths, probes).

Needs no server, network or docker. The Prometheus checks run `promtool` (Debian's
`prometheus` package; scripts/test.sh installs it): without it they are skipped with a
warning, unless QUIVER_REQUIRE_PROMTOOL=1, then they fail. The metric names and labels
come from the metrics table of docs/observability.md, which test_observability checks
against a running server's /metrics."""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

import observability_doc
from observability_doc import promtool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))


def load_yaml(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yml")


def k8s_docs() -> dict:
    """The Kubernetes objects of deploy/k8s by kind (one object of each kind)."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in docs, f"two objects of kind {doc['kind']}"
                docs[doc["kind"]] = doc
    return docs


def deployment_container() -> dict:
    (container,) = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def is_within(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


# --- every file parses -------------------------------------------------------------


def test_deploy_has_the_files_operators_need():
    for name in [
        "Dockerfile",
        "compose.yml",
        "otel-collector.yaml",
        "quiver.toml",
        "quiver-compose.toml",
        "quiver-container.toml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/provisioning/datasources/datasources.yaml",
        "grafana/provisioning/dashboards/dashboards.yaml",
        "grafana/dashboards/quiver.json",
        "k8s/kustomization.yaml",
        "README.md",
    ]:
        assert (DEPLOY / name).is_file(), f"deploy/{name} is missing"
    assert (ROOT / ".dockerignore").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)


# --- configuration keys --------------------------------------------------------------


def reference_keys() -> set[str]:
    """Every key of deploy/quiver.toml, set or commented out as `# key = ...`."""
    text = (DEPLOY / "quiver.toml").read_text()
    keys = set(tomllib.loads(text))
    keys |= set(re.findall(r"^#\s*([a-z][a-z0-9_]*)\s*=", text, re.MULTILINE))
    return keys


def k8s_config() -> dict:
    return tomllib.loads(k8s_docs()["ConfigMap"]["data"]["quiver.toml"])


def toml_file(name: str):
    return lambda: tomllib.loads((DEPLOY / name).read_text())


CONFIGS = {
    "quiver-compose.toml": toml_file("quiver-compose.toml"),
    "quiver-container.toml": toml_file("quiver-container.toml"),
    "quiver-production.toml": toml_file("quiver-production.toml"),
    "k8s/configmap.yaml": k8s_config,
}


def test_reference_config_lists_the_keys():
    keys = reference_keys()
    # A sample of keys set and commented out: the parsing above must find both kinds.
    assert {"db", "grpc_addr", "http_addr", "demo", "pool_max_size"} <= keys
    assert {"auth", "auth_file", "tls_cert", "target_partitions"} <= keys


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_uses_only_known_keys(name):
    config = CONFIGS[name]()
    unknown = set(config) - reference_keys()
    assert not unknown, f"{name}: keys not in deploy/quiver.toml (refused at start): {unknown}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_listens_beyond_loopback_with_an_auth_decision(name):
    config = CONFIGS[name]()
    assert config["grpc_addr"].startswith("0.0.0.0:"), name
    assert config["http_addr"].startswith("0.0.0.0:"), name
    if name == "quiver-container.toml":
        # The image's default leaves the choice to the operator: it refuses to start.
        assert "auth" not in config and "auth_file" not in config
    else:
        assert config.get("auth") in {"on", "none"}, f"{name}: auth must be explicit"


def test_compose_config_is_the_demo_on_postgres():
    config = CONFIGS["quiver-compose.toml"]()
    assert config["db"].startswith("postgres://")
    assert "@postgres:5432/" in config["db"], "the compose service is named postgres"
    assert config["auth"] == "none"
    assert config["demo"] is True


def test_k8s_config_takes_the_database_from_the_secret():
    config = k8s_config()
    assert "db" not in config, "the database URL holds a password: it comes from the Secret"
    assert config["auth"] == "on"
    container = deployment_container()
    env = {e["name"]: e for e in container["env"]}
    ref = env["QUIVER_DB"]["valueFrom"]["secretKeyRef"]
    secret = k8s_docs()["Secret"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def quiver_env_names(env) -> set[str]:
    names = set(env) if isinstance(env, dict) else {e["name"] for e in env}
    return {n for n in names if n.startswith("QUIVER_")}


def test_quiver_variables_name_known_keys():
    # QUIVER_LOG and QUIVER_TRACE set log and trace verbosity, QUIVER_CONFIG the file.
    known = {f"QUIVER_{key.upper()}" for key in reference_keys()}
    known |= {"QUIVER_LOG", "QUIVER_TRACE", "QUIVER_CONFIG"}
    names = quiver_env_names(compose()["services"]["quiver"].get("environment", {}))
    names |= quiver_env_names(deployment_container()["env"])
    assert names <= known, f"unknown QUIVER_ variables: {names - known}"


# --- the Dockerfile -----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_dockerfile_runtime_stage_runs_quiver_as_a_user():
    runtime = dockerfile_stages()[-1]
    assert runtime[0][1].split()[0] == "debian:bookworm-slim"
    users = [args for word, args in runtime if word == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"USER {users[-1]} is root"
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert str(pod["runAsUser"]) == user, "the Deployment runs as the image's user"

    exposed = {p for word, args in runtime if word == "EXPOSE" for p in args.split()}
    assert {"50051", "8080"} <= exposed
    (entrypoint,) = [json.loads(args) for word, args in runtime if word == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for word, args in runtime if word == "CMD"]
    assert entrypoint == ["/usr/local/bin/quiver"]
    assert cmd[:1] == ["serve"] and "--config" in cmd
    config_path = cmd[cmd.index("--config") + 1]
    # The image carries a file at the --config path, copied from deploy/.
    copies = [args.split() for word, args in runtime if word == "COPY" and "--from" not in args]
    sources = [src for *srcs, dest in copies if dest == config_path for src in srcs]
    assert sources, f"nothing is copied to {config_path}"
    assert all((ROOT / src).is_file() and is_within(ROOT / src, DEPLOY) for src in sources)
    assert not any(word == "HEALTHCHECK" for word, _ in runtime)


def test_dockerfile_builds_with_the_pinned_toolchain():
    instructions = dockerfile_instructions()
    channel = tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    msrv = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    args = dict(
        a.split("=", 1) for word, a in instructions if word == "ARG" and "=" in a
    )
    builder = dockerfile_stages()[0]
    image = builder[0][1].split()[0].replace("${RUST_VERSION}", args.get("RUST_VERSION", ""))
    assert image == f"rust:{channel}-bookworm", "the builder must use rust-toolchain.toml's release"
    version = tuple(int(x) for x in channel.split("."))
    assert version[:2] >= tuple(int(x) for x in msrv.split("."))[:2]
    runs = " ".join(a for word, a in builder if word == "RUN")
    assert "cargo build --release --locked -p quiver-server --bin quiver" in runs
    assert "--mount=type=cache" in runs and "/usr/local/cargo/registry" in runs


def test_dockerignore_keeps_build_output_out_of_the_context():
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"target", ".git", ".venv", "quiver-data"} <= patterns
    # The build needs these: they must not be ignored.
    assert not patterns & {"deploy", "crates", "proto", "Cargo.toml", "Cargo.lock"}


# --- the compose stack --------------------------------------------------------------


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a compose service's bind mounts (short and long syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/", "~")):
                mounts.append((source, target))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def mount_source(service: dict, target: str) -> Path:
    for source, mount_target in bind_mounts(service):
        if mount_target == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"nothing is mounted on {target}")


def test_compose_has_the_stack():
    services = compose()["services"]
    assert {"quiver", "postgres", "otel-collector", "jaeger", "prometheus", "grafana"} <= set(
        services
    )
    assert "healthcheck" in services["postgres"]
    assert services["quiver"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_names_only_files_in_deploy():
    spec = compose()
    declared_volumes = set(spec.get("volumes") or {})
    for name, service in spec["services"].items():
        for source, _ in bind_mounts(service):
            path = DEPLOY / source
            assert path.exists(), f"{name} mounts {source}, which does not exist"
            assert is_within(path, DEPLOY), f"{name} mounts {source}, outside deploy/"
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in declared_volumes, f"{name}: undeclared {volume}"
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            assert (DEPLOY / env_file).is_file(), f"{name}: env_file {env_file} is missing"
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = DEPLOY / build["context"]
            assert context.is_dir(), f"{name}: build context {context} is missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
            assert is_within(dockerfile, DEPLOY)
    for section in ("configs", "secrets"):
        for name, item in (spec.get(section) or {}).items():
            if "file" in item:
                assert (DEPLOY / item["file"]).is_file(), f"{section}.{name}"


def test_compose_quiver_runs_its_config_on_postgres_with_traces():
    quiver = compose()["services"]["quiver"]
    command = quiver["command"]
    config_path = command[command.index("--config") + 1]
    assert mount_source(quiver, config_path) == (DEPLOY / "quiver-compose.toml").resolve()
    env = quiver["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert env["OTEL_SERVICE_NAME"] == "quiver"
    config = CONFIGS["quiver-compose.toml"]()
    ports = {p.rsplit(":", 1)[-1] for p in quiver["ports"]}
    assert {config["grpc_addr"].rsplit(":", 1)[1], config["http_addr"].rsplit(":", 1)[1]} <= ports
    # auth = "none": published on loopback only.
    assert all(p.startswith("127.0.0.1:") for p in quiver["ports"])


def test_compose_otel_collector_forwards_to_jaeger():
    collector = compose()["services"]["otel-collector"]
    (config_flag,) = [a for a in collector["command"] if a.startswith("--config")]
    config = load_yaml(mount_source(collector, config_flag.split("=", 1)[1]))
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert "batch" in config["processors"]
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in config[kind], f"pipeline names undefined {kind} {component}"
    endpoints = [config["exporters"][e]["endpoint"] for e in pipeline["exporters"]]
    assert "jaeger:4317" in endpoints
    assert compose()["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_compose_prometheus_loads_the_rules_and_scrapes_quiver():
    prometheus = compose()["services"]["prometheus"]
    (config_flag,) = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    config_path = config_flag.split("=", 1)[1]
    local = mount_source(prometheus, config_path)
    assert local == (DEPLOY / "prometheus" / "prometheus.yml").resolve()
    config = load_yaml(local)
    for rule_file in config["rule_files"]:
        # Relative rule files resolve next to the config, in the container and here.
        in_container = str(Path(config_path).parent / rule_file)
        assert mount_source(prometheus, in_container) == (local.parent / rule_file).resolve()
    assert (local.parent / "alerts.yml").resolve() in {
        (local.parent / r).resolve() for r in config["rule_files"]
    }
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "quiver"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    http_port = CONFIGS["quiver-compose.toml"]()["http_addr"].rsplit(":", 1)[1]
    assert targets == [f"quiver:{http_port}"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]


def test_compose_grafana_is_provisioned():
    grafana = compose()["services"]["grafana"]
    datasources_dir = mount_source(grafana, "/etc/grafana/provisioning/datasources")
    dashboards_dir = mount_source(grafana, "/etc/grafana/provisioning/dashboards")
    datasources = load_yaml(datasources_dir / "datasources.yaml")["datasources"]
    by_type = {d["type"]: d for d in datasources}
    assert {"prometheus", "jaeger"} <= set(by_type)
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["jaeger"]["url"] == "http://jaeger:16686"
    destinations = by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {d["datasourceUid"] for d in destinations} == {by_type["jaeger"]["uid"]}
    (provider,) = load_yaml(dashboards_dir / "dashboards.yaml")["providers"]
    local = mount_source(grafana, provider["options"]["path"])
    assert (local / "quiver.json").is_file()


# --- metric names -------------------------------------------------------------------


PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan", "atan2",
}  # fmt: skip
TARGET_LABELS = {"job", "instance"}


def documented_metrics() -> dict[str, set[str]]:
    """Metric name → its labels, from the metrics table of docs/observability.md;
    histograms also under their `_bucket`, `_sum` and `_count` series (`_bucket`
    with `le`)."""
    metrics: dict[str, set[str]] = {}
    for name, metric in observability_doc.documented_metrics().items():
        metrics[name] = metric["labels"]
        if metric["type"] == "histogram":
            metrics[f"{name}_sum"] = metric["labels"]
            metrics[f"{name}_count"] = metric["labels"]
            metrics[f"{name}_bucket"] = metric["labels"] | {"le"}
    assert "rpc_server_call_duration_seconds_bucket" in metrics, "the metrics table did not parse"
    return metrics


def promql_references(expr: str):
    """(metric names, {metric: labels matched}, labels grouped on) of a PromQL
    expression; Grafana variables are dropped first."""
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)
    label_values = re.fullmatch(r"\s*label_values\((.*?)(?:,\s*(\w+))?\)\s*", expr)
    if label_values:  # a Grafana variable query: label_values(selector, label)
        expr = label_values.group(1)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    matched: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        matched.setdefault(name, set()).update(labels)
    grouped = set()
    pattern = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for labels in re.findall(pattern, expr):
        grouped |= set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", labels))
    bare = re.sub(pattern, " ", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    names = {
        word
        for word in re.findall(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", bare)
        if word.lower() not in PROMQL_KEYWORDS
    }
    return names, matched, grouped


def alert_rules() -> list[dict]:
    groups = load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "quiver.json").read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_expressions() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def check_expressions(exprs: list[str], where: str):
    metrics = documented_metrics()
    all_labels = set().union(*metrics.values()) | TARGET_LABELS | {"le"}
    problems = []
    for expr in exprs:
        names, matched, grouped = promql_references(expr)
        if not names:
            problems.append(f"no metric found in {expr!r}")
        for name in names - {"up"}:
            if name not in metrics:
                problems.append(f"unknown metric {name} in {expr!r}")
        for name, labels in matched.items():
            allowed = metrics.get(name, set()) | TARGET_LABELS
            if labels - allowed:
                problems.append(f"{name} has no label {labels - allowed} in {expr!r}")
        if grouped - all_labels:
            problems.append(f"unknown labels {grouped - all_labels} grouped on in {expr!r}")
    assert not problems, f"{where}:\n" + "\n".join(problems)


def test_expression_parser_finds_names_and_labels():
    names, matched, grouped = promql_references(
        "histogram_quantile(0.99, sum by (rpc_method, le) ("
        'rate(rpc_server_call_duration_seconds_bucket{rpc_system="grpc", job=~"$job"}'
        "[$__rate_interval]))) / ignoring (x) up offset 5m > 1e3"
    )
    assert names == {"rpc_server_call_duration_seconds_bucket", "up"}
    assert matched == {"rpc_server_call_duration_seconds_bucket": {"rpc_system", "job"}}
    assert grouped == {"rpc_method", "le", "x"}
    assert promql_references('label_values(quiver_build_info{job=~"$job"}, instance)')[0] == {
        "quiver_build_info"
    }


def test_alert_rules_use_exposed_metrics():
    check_expressions([rule["expr"] for rule in alert_rules()], "deploy/prometheus/alerts.yml")


def test_dashboard_uses_exposed_metrics():
    check_expressions(dashboard_expressions(), "deploy/grafana/dashboards/quiver.json")


def test_a_wrong_metric_or_label_is_caught():
    documented_metrics()
    with pytest.raises(AssertionError, match="unknown metric"):
        check_expressions(["rate(quiver_queries_totl[5m])"], "test")
    with pytest.raises(AssertionError, match="has no label"):
        check_expressions(['rpc_server_call_duration_seconds_count{grpc_code="0"}'], "test")


# --- alert rules and the dashboard --------------------------------------------------


def test_alert_rules_are_complete():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert "for" in rule, f"{rule['alert']} has no `for`"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]
    exprs = " ".join(rule["expr"] for rule in rules)
    for wanted in [
        "up{",
        "rpc_grpc_status_code",
        "arrow.flight.protocol.FlightService",
        "db_client_connection_max",
        "db_client_connection_wait_time_seconds_bucket",
        "quiver_subscription_lag_versions_max",
    ]:
        assert wanted in exprs, f"no alert rule on {wanted}"


def test_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert board["uid"] == "quiver"
    assert 36 <= board["schemaVersion"] <= 41
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = " / ".join(p["title"].lower() for p in panels)
    for wanted in [
        "request rate", "error", "latency", "phase", "rows", "bytes", "pool",
        "acquire wait", "transactions", "change-log", "subscriptions active", "lag",
        "delivered", "delivery latency", "slow queries", "build",
    ]:  # fmt: skip
        assert wanted in titles, f"no panel about {wanted}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    latency = [p for p in panels if "latency p50 / p99" in p["title"]]
    assert latency and all(t.get("exemplar") for p in latency for t in p["targets"])
    assert all("histogram_quantile" in t["expr"] for p in latency for t in p["targets"])


# --- promtool -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["test", "rules", "deploy/prometheus/alerts.test.yml"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_promtool(args):
    result = subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes ---------------------------------------------------------------------


def test_kustomization_lists_the_manifests():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization names missing {resource}"
    not_resources = {"kustomization.yaml", "secret.example.yaml"}
    expected = {p.name for p in K8S.glob("*.yaml") if p.name not in not_resources}
    assert set(resources) == expected
    assert "secret.example.yaml" not in resources, "placeholders must never be applied"


def container_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def test_deployment_probes_and_security():
    deployment = k8s_docs()["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]
    container = deployment_container()
    config = k8s_config()
    http_port = int(config["http_addr"].rsplit(":", 1)[1])
    grpc_port = int(config["grpc_addr"].rsplit(":", 1)[1])
    assert {p["containerPort"] for p in container["ports"]} == {http_port, grpc_port}

    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["startupProbe"]["path"] in {"/healthz", "/readyz"}
    for probe in probes.values():
        assert container_port(container, probe["port"]) == http_port

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]

    env = {e["name"]: e for e in container["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http")
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == http_port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_deployment_mounts_what_the_config_names():
    container = deployment_container()
    pod_spec = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    args = container["args"]
    config_mount = mounts[args[args.index("--config") + 1]]
    config_volume = volumes[config_mount["name"]]
    configmap = k8s_docs()["ConfigMap"]
    assert config_volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_mount["subPath"] in configmap["data"]

    auth_file = Path(k8s_config()["auth_file"])
    auth_mount = mounts[str(auth_file.parent)]
    secret_volume = volumes[auth_mount["name"]]["secret"]
    secret = k8s_docs()["Secret"]
    assert secret_volume["secretName"] == secret["metadata"]["name"]
    items = {item["path"]: item["key"] for item in secret_volume["items"]}
    assert items[auth_file.name] in secret["stringData"]
    auth = tomllib.loads(secret["stringData"][items[auth_file.name]])
    if "token_secret_file" in auth:  # relative to the auth file: in the same volume
        assert items[auth["token_secret_file"]] in secret["stringData"]


def test_service_and_pdb_select_the_pods():
    docs = k8s_docs()
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    container = deployment_container()
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {
        p["port"]: container_port(container, p["targetPort"]) for p in service["spec"]["ports"]
    }
    assert ports == {50051: 50051, 8080: 8080}
    pdb = docs["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 2 < docs["Deployment"]["spec"]["replicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert kinds == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
