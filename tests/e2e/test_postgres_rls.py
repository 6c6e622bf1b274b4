"""PostgreSQL tenant isolation below the application: connected as the services' role,
raw SQL cannot read or write another tenant's rows; migrations are idempotent and safe
to run concurrently; a service refuses to start on a schema it does not know."""

from __future__ import annotations

import subprocess

import httpx2
import psycopg
import pytest

from conftest import BIN, PG_HOST, pg_admin, to_toml

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


def as_service(database) -> psycopg.Connection:
    return psycopg.connect(f"host=127.0.0.1 port=5432 user=gantry_app dbname={database.name}")


def test_service_role_cannot_cross_tenants_with_raw_sql(control_plane, database):
    g, api = control_plane()
    admin = api.login()["access_token"]
    api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "beta", "name": "Beta"})
    acme = api.login()["tenant"]["tenant_id"]
    api.request("POST", "/v1/keys", token=admin, json_body={"name": "acme-key"})
    beta = next(t["id"] for t in api.request("GET", "/v1/tenants", token=admin).json()["items"] if t["slug"] == "beta")

    with as_service(database) as c:
        role = c.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()
        assert role == (False, False)
        owned = c.execute("SELECT count(*) FROM pg_tables WHERE tableowner = current_user").fetchone()[0]
        assert owned == 0, "the service role must own nothing"

        # No tenant set: nothing is visible, nothing can be written.
        for table in ("tenants", "memberships", "api_keys"):
            assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
        c.rollback()

        with c.transaction():
            c.execute("SELECT set_config('app.tenant_id', %s, true)", (acme,))
            assert [r[0] for r in c.execute("SELECT name FROM api_keys")] == ["acme-key"]
            assert [r[0] for r in c.execute("SELECT slug FROM tenants")] == ["acme"]
            # Updating or deleting another tenant's rows touches nothing.
            assert c.execute("UPDATE tenants SET name = 'pwned' WHERE id = %s", (beta,)).rowcount == 0
            assert c.execute("DELETE FROM memberships WHERE tenant_id = %s", (beta,)).rowcount == 0

        # Writing a row into another tenant is refused by the policy's WITH CHECK.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with c.transaction():
                c.execute("SELECT set_config('app.tenant_id', %s, true)", (acme,))
                c.execute("INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, scopes, created_at) "
                          "VALUES ('x', %s, 'planted', 'gty_', 'h', 'mcp', 0)", (beta,))
        # Moving an own row into another tenant is refused too.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with c.transaction():
                c.execute("SELECT set_config('app.tenant_id', %s, true)", (acme,))
                c.execute("UPDATE api_keys SET tenant_id = %s", (beta,))

        # The setting is transaction-local: a pooled connection does not carry it on.
        with c.transaction():
            c.execute("SELECT set_config('app.tenant_id', %s, true)", (acme,))
        assert c.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0
        c.rollback()

        # And the service role cannot switch the protection off.
        for statement in ("ALTER TABLE api_keys DISABLE ROW LEVEL SECURITY",
                          "ALTER TABLE api_keys NO FORCE ROW LEVEL SECURITY",
                          "DROP POLICY tenant_isolation ON api_keys"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with c.transaction():
                    c.execute(statement)
        c.execute("SET row_security = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT count(*) FROM api_keys")


def test_migrations_are_idempotent_and_safe_concurrently(database):
    config = database.tmp / "migrate.toml"
    config.write_text(to_toml({"database": database.config()}))
    runs = [subprocess.Popen([BIN, "--config", str(config), "migrate"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in runs]
    assert all(code == 0 for code, _, _ in outcomes), outcomes
    applied = [out for _, out, _ in outcomes if "applied" in out]
    assert len(applied) == 1, outcomes
    again = database.gantry("migrate")
    assert again.returncode == 0 and "up to date" in again.stdout


def test_service_refuses_an_unmigrated_database(database, tmp_path):
    config = tmp_path / "api.toml"
    # The cluster trusts local connections, so the password is ignored, but it must
    # still never be echoed.
    url = f"postgres://postgres:hunter2-in-url@{PG_HOST}/{database.name}"
    config.write_text(to_toml({"database": {"url": url}}))
    r = subprocess.run([BIN, "--config", str(config), "api", "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "gantry migrate" in r.stderr
    assert "hunter2-in-url" not in r.stderr + r.stdout


def test_migrations_at_start_up_run_as_the_owner_and_the_service_as_gantry_app(gantry, database):
    """The Docker stack's set-up: api_server migrates at start-up through migrate_url (the
    owner) while serving as gantry_app, each with its password given apart from its URL."""
    with pg_admin() as c:
        # Cluster-wide and possibly left by another test; the stack's init script makes it.
        c.execute("DO $$ BEGIN CREATE ROLE gantry_app LOGIN; EXCEPTION WHEN duplicate_object THEN "
                  "ALTER ROLE gantry_app LOGIN; END $$")
    g = gantry({"database": {"url": database.url, "migrate_url": database.migrate_url,
                             "password": "app-secret-1", "migrate_password": "owner-secret-2",
                             "migrate_on_start": True}}, role="api")
    r = httpx2.get(g.base + "/api/ready", timeout=10)
    assert r.status_code == 200, r.text
    with as_service(database) as c:
        owner = c.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'tenants'").fetchone()[0]
    assert owner == "postgres", "the tables belong to the owner, not to the service's role"
    logs = g.logs()
    assert "app-secret-1" not in logs and "owner-secret-2" not in logs
