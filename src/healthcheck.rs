//! `gantry healthcheck`: probes the local `/ready`, so images need no curl.

use std::time::Duration;

/// Turns a listen address into one to connect to: a wildcard becomes loopback.
pub fn probe_address(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let ip = if addr.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            format!("{ip}:{}", addr.port())
        }
        _ => listen.to_string(),
    }
}

pub async fn run(addr: &str) -> bool {
    let url = format!("http://{}/ready", probe_address(addr));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            println!("ready: {url}");
            true
        }
        Ok(r) => {
            eprintln!("not ready: {url} answered {}", r.status());
            false
        }
        Err(e) => {
            eprintln!(
                "not ready: {url}: {}",
                crate::upstream::http_client::error_chain(&e.without_url())
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wildcard_becomes_loopback() {
        assert_eq!(super::probe_address("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(super::probe_address("127.0.0.1:9"), "127.0.0.1:9");
    }
}
