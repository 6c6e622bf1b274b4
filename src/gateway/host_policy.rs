//! DNS-rebinding protection: which `Host` and `Origin` values may reach the gateway.

use std::net::SocketAddr;

use http::HeaderMap;

use crate::config::ServerConfig;

pub struct HostPolicy {
    /// `None` accepts any host.
    hosts: Option<Vec<String>>,
    origins: Vec<String>,
    loopback_origins: bool,
}

const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "[::1]", "::1"];

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

impl HostPolicy {
    pub fn new(config: &ServerConfig, bound: SocketAddr) -> Self {
        let loopback = bound.ip().is_loopback();
        let any_host = config.allowed_hosts.iter().any(|h| h == "*")
            || (config.allowed_hosts.is_empty() && !loopback);
        let hosts = if any_host {
            None
        } else {
            let mut hosts: Vec<String> = config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            if loopback {
                hosts.extend(LOOPBACK_NAMES.iter().map(|s| s.to_string()));
            }
            Some(hosts)
        };
        Self {
            hosts,
            origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            loopback_origins: loopback,
        }
    }

    /// `Err` carries the reason for the 403.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        if let Some(hosts) = &self.hosts {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| host_without_port(h).to_ascii_lowercase());
            match host {
                Some(h) if hosts.contains(&h) => {}
                Some(h) => return Err(format!("Host '{h}' is not allowed")),
                None => return Err("missing Host header".into()),
            }
        }
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin
                .to_str()
                .map_err(|_| "invalid Origin header".to_string())?;
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            let allowed = self.origins.contains(&origin)
                || (self.loopback_origins && is_loopback_origin(&origin));
            if !allowed {
                return Err(format!("Origin '{origin}' is not allowed"));
            }
        }
        Ok(())
    }
}

fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    LOOPBACK_NAMES.contains(&host_without_port(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn loopback_binding_refuses_foreign_hosts_and_origins() {
        let p = HostPolicy::new(&ServerConfig::default(), "127.0.0.1:8080".parse().unwrap());
        assert!(p.check(&h(&[("host", "127.0.0.1:8080")])).is_ok());
        assert!(
            p.check(&h(&[
                ("host", "localhost:8080"),
                ("origin", "http://localhost:3000")
            ]))
            .is_ok()
        );
        assert!(p.check(&h(&[("host", "evil.example:8080")])).is_err());
        assert!(
            p.check(&h(&[
                ("host", "localhost:8080"),
                ("origin", "https://evil.example")
            ]))
            .is_err()
        );
    }

    #[test]
    fn configured_origins_are_accepted() {
        let config = ServerConfig {
            allowed_hosts: vec!["gantry.example.com".into()],
            allowed_origins: vec!["https://app.example.com".into()],
            ..ServerConfig::default()
        };
        let p = HostPolicy::new(&config, "0.0.0.0:8080".parse().unwrap());
        assert!(
            p.check(&h(&[
                ("host", "gantry.example.com"),
                ("origin", "https://app.example.com")
            ]))
            .is_ok()
        );
        assert!(p.check(&h(&[("host", "other.example.com")])).is_err());
    }
}
