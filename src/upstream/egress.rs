//! Where a tenant's registered upstream may connect. Loopback, link-local (cloud
//! metadata), unspecified and multicast addresses are never a legitimate remote MCP
//! server and are often an attack on the gateway's own network (SSRF), so they are
//! refused unless the operator names the host in `registry.allowed_hosts`.
//!
//! The rule is checked when a server is registered (`api::servers`) and again on every
//! connection: a name that later resolves elsewhere (DNS rebinding) or an allow-list the
//! operator has since tightened is enforced where the address is actually used. Servers
//! of the configuration file are the operator's own and are not restricted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Loopback, link-local, unspecified, multicast or broadcast (IPv4-mapped IPv6 included).
pub fn forbidden_target(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The egress rule of registered upstreams.
#[derive(Clone, Debug, Default)]
pub struct Egress {
    allowed_hosts: Arc<Vec<String>>,
}

impl Egress {
    pub fn new(allowed_hosts: &[String]) -> Self {
        Self {
            allowed_hosts: Arc::new(allowed_hosts.to_vec()),
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        self.allowed_hosts.iter().any(|h| h == host)
    }

    /// Why `url` may not be reached, or `None`. Names are resolved here; an address
    /// written in the URL is checked as it stands.
    pub async fn refusal(&self, url: &url::Url) -> Result<Option<String>, String> {
        let host = host_of(url).ok_or_else(|| "has no host".to_string())?;
        if self.allows_host(host) || host.parse::<IpAddr>().is_ok() {
            return Ok(self.address_refusal(url));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        Ok(self.resolved_refusal(host, &addrs))
    }

    /// Why an address written in `url` may not be reached, or `None` (also for a name:
    /// names are the resolver's to check, on every connection).
    pub fn address_refusal(&self, url: &url::Url) -> Option<String> {
        let host = host_of(url)?;
        let ip = host.parse::<IpAddr>().ok()?;
        (!self.allows_host(host) && forbidden_target(ip)).then(|| refused(host, ip))
    }

    /// Why the addresses `host` resolved to may not be reached, or `None`. One refused
    /// address refuses the name: a rebinding attacker answers with a mix, hoping the
    /// client tries the private one.
    pub fn resolved_refusal(&self, host: &str, addrs: &[SocketAddr]) -> Option<String> {
        if self.allows_host(host) {
            return None;
        }
        addrs
            .iter()
            .find(|a| forbidden_target(a.ip()))
            .map(|bad| refused(host, bad.ip()))
    }
}

/// The URL's host, IPv6 brackets removed.
fn host_of(url: &url::Url) -> Option<&str> {
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
}

fn refused(host: &str, ip: IpAddr) -> String {
    format!(
        "{host} resolves to {ip}, a loopback or link-local address; an operator can allow it in registry.allowed_hosts"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssrf_targets_are_recognised() {
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "224.0.0.1",
        ] {
            assert!(forbidden_target(bad.parse().unwrap()), "{bad}");
        }
        for good in ["10.0.0.1", "192.168.1.2", "8.8.8.8", "2001:db8::1"] {
            assert!(!forbidden_target(good.parse().unwrap()), "{good}");
        }
    }

    #[tokio::test]
    async fn addresses_in_urls_and_allowed_hosts() {
        let strict = Egress::default();
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(
            strict
                .refusal(&url("http://169.254.169.254/latest"))
                .await
                .unwrap()
                .unwrap()
                .contains("link-local")
        );
        assert!(
            strict
                .refusal(&url("http://[::1]:8080/mcp"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            strict.refusal(&url("http://10.0.0.1/mcp")).await.unwrap(),
            None
        );
        let open = Egress::new(&["127.0.0.1".to_string()]);
        assert_eq!(
            open.refusal(&url("http://127.0.0.1:9/mcp")).await.unwrap(),
            None
        );
    }
}
