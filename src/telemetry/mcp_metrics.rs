//! One upstream's `mcp_requests_total{server,method,outcome}`,
//! `mcp_request_duration_seconds{server,method}`, `mcp_requests_in_flight{server}` and
//! `mcp_notifications_dropped_total{server}` and `mcp_server_requests_declined_total{server}`,
//! each with a `tenant` label too for a server a tenant registered (two tenants may each
//! have a server of one name).
//!
//! Handles are looked up once per label set and kept with the upstream: registering a
//! metric on each call (building its key, hashing it, finding it in the registry) costs
//! more than recording it. Methods and outcomes are `'static` labels from closed lists,
//! so the set stays small.

use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};

use super::metrics as m;

/// The labels naming a server: `server`, and `tenant` for a registered one.
pub fn server_labels(server: &str, tenant: Option<&str>) -> Vec<Label> {
    let mut labels = vec![Label::new("server", server.to_string())];
    if let Some(tenant) = tenant {
        labels.push(Label::new("tenant", tenant.to_string()));
    }
    labels
}

fn with(labels: &[Label], more: &[(&'static str, &'static str)]) -> Vec<Label> {
    let mut all = labels.to_vec();
    all.extend(more.iter().map(|&(k, v)| Label::new(k, v)));
    all
}

pub struct CallMetrics {
    labels: Vec<Label>,
    in_flight: Gauge,
    notifications_dropped: Counter,
    server_requests_declined: Counter,
    counts: Mutex<Vec<(&'static str, &'static str, Counter)>>,
    durations: Mutex<Vec<(&'static str, Histogram)>>,
}

impl CallMetrics {
    pub fn new(server: &str, tenant: Option<&str>) -> Self {
        let labels = server_labels(server, tenant);
        Self {
            in_flight: metrics::gauge!(m::MCP_IN_FLIGHT, labels.iter()),
            notifications_dropped: metrics::counter!(m::NOTIFICATIONS_DROPPED, labels.iter()),
            server_requests_declined: metrics::counter!(m::SERVER_REQUESTS_DECLINED, labels.iter()),
            labels,
            counts: Mutex::new(Vec::new()),
            durations: Mutex::new(Vec::new()),
        }
    }

    /// Requests sent upstream and not yet answered or abandoned.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// Notifications a client read too slowly to be given (see `gateway::client_stream`).
    pub fn notifications_dropped(&self) -> &Counter {
        &self.notifications_dropped
    }

    /// Server requests answered for a client that was not taking them (see
    /// `gateway::relay::Declines`).
    pub fn server_requests_declined(&self) -> &Counter {
        &self.server_requests_declined
    }

    pub fn record(&self, method: &'static str, outcome: &'static str, elapsed: Duration) {
        let count = {
            let mut counts = self.counts.lock().unwrap();
            match counts
                .iter()
                .find(|(mm, o, _)| *mm == method && *o == outcome)
            {
                Some((_, _, c)) => c.clone(),
                None => {
                    let labels = with(&self.labels, &[("method", method), ("outcome", outcome)]);
                    let c = metrics::counter!(m::MCP_REQUESTS, labels);
                    counts.push((method, outcome, c.clone()));
                    c
                }
            }
        };
        count.increment(1);
        let duration = {
            let mut durations = self.durations.lock().unwrap();
            match durations.iter().find(|(mm, _)| *mm == method) {
                Some((_, h)) => h.clone(),
                None => {
                    let labels = with(&self.labels, &[("method", method)]);
                    let h = metrics::histogram!(m::MCP_DURATION, labels);
                    durations.push((method, h.clone()));
                    h
                }
            }
        };
        duration.record(elapsed.as_secs_f64());
    }
}
