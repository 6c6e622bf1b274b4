//! `gantry doctor`: checks the configuration and every dependency it names, one line
//! per check, for operators inside minimal containers that have no ping or curl.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, TransportKind, UpstreamConfig, resolve_reference};

const NETWORK_TIMEOUT: Duration = Duration::from_secs(3);

/// One check's result, printed as `ok|FAIL  subject  detail`.
pub struct Check {
    pub ok: bool,
    pub subject: String,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{status}  {:<24} {}", self.subject, self.detail)
    }
}

fn check(ok: bool, subject: &str, detail: String) -> Check {
    Check {
        ok,
        subject: subject.to_string(),
        detail,
    }
}

/// Runs every check; the caller prints them and turns any failure into exit status 1.
pub async fn run(config: &Config, source: &str) -> Vec<Check> {
    let mut checks = vec![check(true, "config", format!("loaded from {source}"))];
    if config.vault.addr.is_some() || std::env::var("VAULT_ADDR").is_ok() {
        // Loading the configuration already read every vault: reference.
        checks.push(check(
            true,
            "vault",
            "every vault: reference resolved".into(),
        ));
    }
    for (subject, url) in dependency_urls(config) {
        if let Some(line) = dns(&subject, &url).await {
            checks.push(line);
        }
    }
    checks.push(database(config).await);
    checks.push(cache(config).await);
    if config.audit.enabled {
        checks.push(audit(config).await);
    }
    for (name, upstream) in config.upstreams.iter().filter(|(_, u)| u.enabled) {
        let subject = format!("upstream {name}");
        checks.extend(references(&subject, upstream));
        checks.push(match upstream.transport {
            TransportKind::Stdio => command(&subject, upstream),
            TransportKind::StreamableHttp | TransportKind::Sse => {
                reachable(&subject, upstream).await
            }
        });
    }
    checks
}

/// The network services the configuration names, for the DNS lines.
fn dependency_urls(config: &Config) -> Vec<(String, String)> {
    let mut urls = Vec::new();
    if let Some(addr) = config
        .vault
        .addr
        .clone()
        .or_else(|| std::env::var("VAULT_ADDR").ok())
    {
        urls.push(("dns vault".to_string(), addr));
    }
    if let Some(url) = &config.database.url {
        urls.push(("dns database".into(), url.expose().to_string()));
    }
    urls.push(("dns cache".into(), config.cache.url.expose().to_string()));
    if config.audit.enabled {
        urls.push(("dns audit".into(), config.audit.store.expose().to_string()));
    }
    urls
}

/// Resolves the host a URL names, so a wrong service name is told apart from a service
/// that is down. Embedded backends (sqlite, memory, sql) have no host: no line.
async fn dns(subject: &str, url: &str) -> Option<Check> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.trim_matches(['[', ']']).to_string();
    let port = parsed.port_or_known_default().unwrap_or(0);
    Some(match resolve(&host, port).await {
        Ok(addrs) => {
            let ips: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            check(true, subject, format!("{host} → {}", ips.join(", ")))
        }
        Err(reason) => check(false, subject, format!("{host}: {reason}")),
    })
}

/// The addresses `host` resolves to, within the network timeout; at least one.
async fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    match tokio::time::timeout(NETWORK_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                Err("no addresses".into())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {} s", NETWORK_TIMEOUT.as_secs())),
    }
}

/// The relational database: reachable, and migrated to what this binary expects.
async fn database(config: &Config) -> Check {
    let url = config
        .database
        .url
        .as_ref()
        .map(|u| u.expose().to_string())
        .unwrap_or_else(|| crate::config::EMBEDDED_DATABASE.to_string());
    let dialect = crate::store::Dialect::of(&url);
    let backend = dialect.map(|d| d.name()).unwrap_or("?");
    if dialect == Some(crate::store::Dialect::Sqlite) {
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:")
            .split('?')
            .next()
            .unwrap_or_default();
        if !path.is_empty() && path != ":memory:" && !Path::new(path).exists() {
            // Checking must not create it: `serve` does that, migrated, on first start.
            return check(
                true,
                "database",
                format!("sqlite: {path} does not exist yet; created on first start"),
            );
        }
    }
    let outcome = tokio::time::timeout(NETWORK_TIMEOUT * 2, async {
        let store = crate::store::Store::connect(&url, &config.database).await?;
        store.ping().await?;
        let migrated = store.check_migrated().await;
        store.close().await;
        migrated
    })
    .await;
    match outcome {
        Ok(Ok(())) => check(
            true,
            "database",
            format!("{backend}: reachable, schema up to date"),
        ),
        Ok(Err(e)) => check(false, "database", format!("{backend}: {e}")),
        Err(_) => check(
            false,
            "database",
            format!("{backend}: no answer within 6 s"),
        ),
    }
}

async fn cache(config: &Config) -> Check {
    let url = config.cache.url.expose();
    if url == "memory://" {
        return check(true, "cache", "in-process (memory://)".into());
    }
    let outcome = tokio::time::timeout(NETWORK_TIMEOUT, async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    match outcome {
        Ok(Ok(_)) => check(true, "cache", "redis: PING answered".into()),
        Ok(Err(e)) => check(false, "cache", format!("redis: {:?}", e.kind())),
        Err(_) => check(false, "cache", "redis: no answer within 3 s".into()),
    }
}

async fn audit(config: &Config) -> Check {
    use crate::audit::AuditStore;
    let url = config.audit.store.expose();
    if url == "sql" {
        return check(true, "audit", "kept in the database".into());
    }
    let outcome = tokio::time::timeout(NETWORK_TIMEOUT * 2, async {
        let store =
            crate::audit::mongo::MongoAudit::connect(url, config.audit.retention_days).await?;
        store.ping().await
    })
    .await;
    match outcome {
        Ok(Ok(())) => check(true, "audit", "mongodb: ping answered".into()),
        Ok(Err(e)) => check(false, "audit", format!("mongodb: {e}")),
        Err(_) => check(false, "audit", "mongodb: no answer within 6 s".into()),
    }
}

/// Every `env:`/`file:` reference must resolve; the value itself is never printed.
fn references(subject: &str, upstream: &UpstreamConfig) -> Vec<Check> {
    upstream
        .secret_values()
        .filter(|(_, _, v)| v.starts_with("env:") || v.starts_with("file:"))
        .map(|(kind, key, value)| match resolve_reference(value) {
            Ok(_) => check(
                true,
                subject,
                format!(
                    "{kind} {key} resolves ({})",
                    value.split(':').next().unwrap_or("")
                ),
            ),
            Err(e) => check(false, subject, format!("{kind} {key}: {e}")),
        })
        .collect()
}

fn command(subject: &str, upstream: &UpstreamConfig) -> Check {
    let program = upstream.command.as_deref().unwrap_or_default();
    match find_program(program) {
        Some(path) => check(
            true,
            subject,
            format!("command {program} found at {}", path.display()),
        ),
        None => check(
            false,
            subject,
            format!("command {program} not found, or not executable"),
        ),
    }
}

fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = Path::new(program);
        return executable(path).then(|| path.to_path_buf());
    }
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| executable(p))
}

async fn reachable(subject: &str, upstream: &UpstreamConfig) -> Check {
    let Some(url) = upstream
        .url
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
    else {
        return check(false, subject, "url does not parse".into());
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = match resolve(&host, port).await {
        Ok(addrs) => addrs[0],
        Err(reason) => return check(false, subject, format!("dns {host}: {reason}")),
    };
    match tokio::time::timeout(NETWORK_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => check(
            true,
            subject,
            format!("{host} → {addr} accepts connections"),
        ),
        Ok(Err(e)) => check(false, subject, format!("{host} → {addr}: {e}")),
        Err(_) => check(
            false,
            subject,
            format!(
                "{host} → {addr}: no connection in {} s",
                NETWORK_TIMEOUT.as_secs()
            ),
        ),
    }
}
