"""The binary, its subcommands and layered configuration."""

import os
import subprocess

import pytest

from conftest import BIN, Gantry, demo_stdio, free_port


def run(*args, cwd=None, env=None, timeout=30):
    return subprocess.run([BIN, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_help_lists_the_subcommands():
    out = run("--help").stdout
    for sub in ["serve", "gateway", "bridge", "migrate", "healthcheck", "doctor", "demo-upstream", "version"]:
        assert f"  {sub}" in out, out


def test_version_names_every_protocol_era():
    out = run("version").stdout
    assert "2026-07-28" in out and "2025-03-26" in out


@pytest.mark.parametrize("filename, text, key", [
    ("gantry.toml", '[server]\nlisten = "127.0.0.1:0"\nmax_bdy_bytes = 10\n', "max_bdy_bytes"),
    ("custom.toml", '[upstreams.web]\ntransport = "streamable-http"\nurl = "ftp://x"\n', "upstreams.web.url"),
    ("stdio.toml", '[upstreams.t]\ntransport = "stdio"\n', "upstreams.t.command"),
    ("threads.toml", '[server]\nworker_threads = 0\n', "server.worker_threads"),
    ("request-read.toml", '[server]\nrequest_read_timeout_secs = -1\n', "server.request_read_timeout_secs"),
    ("write.toml", '[server]\nresponse_write_timeout_secs = 100000000000\n', "server.response_write_timeout_secs"),
    ("message.toml", '[upstreams.t]\ntransport = "stdio"\ncommand = "x"\nmax_message_bytes = 1000\n',
     "upstreams.t.max_message_bytes"),
    ("flush.toml", '[audit]\nflush_interval_ms = 0\n', "audit.flush_interval_ms"),
    ("batch.toml", '[audit]\nqueue_capacity = 100\nbatch_size = 101\n', "audit.batch_size"),
    ("log.toml", '[log]\nbuffer_lines = 0\n', "log.buffer_lines"),
])
def test_bad_config_exits_2_with_one_message_naming_key_and_file(tmp_path, filename, text, key):
    cfg = tmp_path / filename
    cfg.write_text(text)
    r = run("--config", str(cfg), "serve")
    assert r.returncode == 2
    assert key in r.stderr and filename in r.stderr
    assert r.stderr.count("\n") <= 2, "one clear message, not a backtrace"


def test_missing_explicit_file_exits_2(tmp_path):
    r = run("--config", str(tmp_path / "nope.toml"), "serve")
    assert r.returncode == 2 and "nope.toml" in r.stderr


def test_environment_overrides_file_and_unknown_env_key_is_an_error(tmp_path):
    port = free_port()
    cfg = tmp_path / "gantry.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:1"\n')
    # The environment layer wins over the file: the healthcheck probes the env address.
    r = run("healthcheck", cwd=tmp_path, env={"GANTRY_SERVER__LISTEN": f"127.0.0.1:{port}"})
    assert r.returncode == 1 and str(port) in r.stderr
    r = run("healthcheck", cwd=tmp_path, env={"GANTRY_SERVER__LISTN": "x"})
    assert r.returncode == 2 and "listn" in r.stderr.lower()


def test_healthcheck_exits_0_when_ready_and_1_when_not(gantry):
    g = gantry({"upstreams": {"demo": demo_stdio()}})
    assert run("healthcheck", "--addr", g.addr).returncode == 0
    g.stop()
    assert run("healthcheck", "--addr", g.addr).returncode == 1


def test_gateway_role_refuses_to_run_without_api_keys(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:0"\n')
    r = run("--config", str(cfg), "gateway")
    assert r.returncode == 2 and "auth.api_keys" in r.stderr


def test_prefix_never_with_a_real_conflict_is_a_startup_error(tmp_path):
    try:
        Gantry(tmp_path, {"gateway": {"prefix_mode": "never"},
                          "upstreams": {"a": demo_stdio(), "b": demo_stdio()}})
    except RuntimeError as e:
        assert "exited 2" in str(e) and "prefix_mode" in str(e) and "'a'" in str(e) and "'b'" in str(e)
    else:
        raise AssertionError("gantry started despite a name conflict under prefix_mode = never")


def test_multi_threaded_runtime_serves_too(gantry):
    g = gantry({"server": {"worker_threads": 3}, "upstreams": {"demo": demo_stdio()}})
    r = g.modern("tools/call", {"name": "demo__add", "arguments": {"a": 1, "b": 2}})
    assert r.json()["result"]["content"][0]["text"] == "3"


def test_doctor_reports_one_line_per_check_and_fails_on_any(gantry, tmp_path):
    g = gantry({"upstreams": {"demo": demo_stdio()}})
    cfg = tmp_path / "doctor.toml"
    cfg.write_text(
        '[upstreams.local]\ntransport = "stdio"\ncommand = "node"\nenv = { TOKEN = "env:DOCTOR_TOKEN" }\n'
        f'[upstreams.running]\ntransport = "streamable-http"\nurl = "{g.url}"\n'
        '[upstreams.refused]\ntransport = "streamable-http"\nurl = "http://127.0.0.1:9/mcp"\n'
        '[upstreams.absent]\ntransport = "stdio"\ncommand = "/nonexistent/server"\n'
    )
    r = run("--config", str(cfg), "doctor", env={"DOCTOR_TOKEN": "s3cret-token-value"})
    lines = r.stdout.splitlines()
    status = {l.split()[2]: l.split()[0] for l in lines if l.split()[1] == "upstream"}
    assert r.returncode == 1, r.stdout
    assert lines[0].startswith("ok") and "config" in lines[0]
    assert status == {"local": "ok", "running": "ok", "refused": "FAIL", "absent": "FAIL"}, r.stdout
    assert "s3cret-token-value" not in r.stdout + r.stderr
    r = run("--config", str(cfg), "doctor")  # the reference no longer resolves
    assert r.returncode == 1 and "DOCTOR_TOKEN is not set" in r.stdout
    ok = tmp_path / "ok.toml"
    ok.write_text('[upstreams.local]\ntransport = "stdio"\ncommand = "node"\n')
    assert run("--config", str(ok), "doctor", cwd=tmp_path).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 5\n")
    r = run("--config", str(bad), "doctor")
    assert r.returncode == 2 and r.stdout.startswith("FAIL")


def test_doctor_checks_database_cache_and_audit_store(tmp_path):
    from conftest import free_port
    cfg = tmp_path / "deps.toml"
    closed = free_port()
    cfg.write_text(
        '[database]\nurl = "postgres://postgres@127.0.0.1:5432/gantry_no_such_database"\n'
        f'[cache]\nurl = "redis://127.0.0.1:{closed}/0"\n'
        f'[audit]\nstore = "mongodb://127.0.0.1:{closed}/audit"\n'
    )
    r = run("--config", str(cfg), "doctor", timeout=60)
    status = {l.split()[1]: l.split()[0] for l in r.stdout.splitlines()}
    assert r.returncode == 1
    assert status["database"] == "FAIL" and status["cache"] == "FAIL" and status["audit"] == "FAIL", r.stdout
    cfg.write_text('[database]\nurl = "postgres://postgres@127.0.0.1:5432/postgres"\n'
                   '[cache]\nurl = "redis://127.0.0.1:6379/0"\n')
    r = run("--config", str(cfg), "doctor", timeout=60)
    status = {l.split()[1]: (l.split()[0], l) for l in r.stdout.splitlines()}
    assert status["cache"][0] == "ok", r.stdout
    # Reachable, but nobody ran `gantry migrate` on it: the doctor says so.
    assert status["database"][0] == "FAIL" and "gantry migrate" in status["database"][1], r.stdout
    assert not (tmp_path / "gantry.db").exists()


def test_the_readme_configuration_example_is_valid(tmp_path):
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    example = section.split("```toml", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "readme.toml"
    cfg.write_text(example)
    # `migrate` loads and validates the whole configuration but reaches nothing beyond
    # the embedded database in this directory (doctor would try the example's hosts).
    r = run("--config", str(cfg), "migrate", cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
