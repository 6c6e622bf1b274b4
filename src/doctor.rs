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

/// Every `env:`/`file:` reference must resolve; the value itself is never printed.
fn references(subject: &str, upstream: &UpstreamConfig) -> Vec<Check> {
    let named = upstream
        .env
        .iter()
        .map(|(k, v)| ("env", k, v))
        .chain(upstream.headers.iter().map(|(k, v)| ("header", k, v)));
    named
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
    let lookup = tokio::time::timeout(
        NETWORK_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let addrs: Vec<_> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return check(false, subject, format!("dns {host}: {e}")),
        Err(_) => {
            return check(
                false,
                subject,
                format!("dns {host}: no answer in {} s", NETWORK_TIMEOUT.as_secs()),
            );
        }
    };
    let Some(addr) = addrs.first().copied() else {
        return check(false, subject, format!("dns {host}: no addresses"));
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
