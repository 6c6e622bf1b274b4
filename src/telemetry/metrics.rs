//! Metric names (the alert rules and dashboards use them verbatim) and the recorder.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::upstream_state::UpstreamState;

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const MCP_REQUESTS: &str = "mcp_requests_total";
pub const MCP_DURATION: &str = "mcp_request_duration_seconds";
pub const MCP_IN_FLIGHT: &str = "mcp_requests_in_flight";
/// The next three are written at scrape time from the live upstreams (`upstream_state`).
pub const UPSTREAM_UP: &str = "mcp_upstream_up";
pub const UPSTREAM_RESTARTS: &str = "mcp_upstream_restarts_total";
pub const UPSTREAM_CIRCUIT_OPEN: &str = "mcp_upstream_circuit_open";
/// Audit events by `result`: written, spilled (to the local file), replayed (from it).
pub const AUDIT_EVENTS: &str = "audit_events_total";
/// Audit events that could not be kept, by `reason`.
pub const AUDIT_DROPPED: &str = "audit_events_dropped_total";
pub const AUDIT_SPILL_BYTES: &str = "audit_spill_bytes";
pub const AUDIT_STORE_UP: &str = "audit_store_up";
/// Opted-in tool results looked up in the gateway's cache, by `server` and `result` (hit, miss).
pub const TOOL_CACHE: &str = "mcp_tool_cache_total";
/// Requests refused by a rate limit or concurrency cap, by `scope` (tenant, key) and `kind`.
pub const RATE_LIMITED: &str = "rate_limited_total";
/// Limit checks made in-process because Redis did not answer, by `kind` (rate,
/// concurrency).
pub const RATE_LIMIT_FALLBACK: &str = "rate_limit_fallback_total";
/// Client connections closed for waiting on their client too long, by `timeout` (read:
/// for a request; write: for the client to take its answer).
pub const CONNECTIONS_TIMED_OUT: &str = "http_connections_timed_out_total";
/// Notifications not given to a client that read its stream too slowly, by `server`.
pub const NOTIFICATIONS_DROPPED: &str = "mcp_notifications_dropped_total";
/// Server requests (sampling, elicitation, roots) the gateway answered with an error for a
/// client that was not taking them, by `server`.
pub const SERVER_REQUESTS_DECLINED: &str = "mcp_server_requests_declined_total";
/// Requests carried to the replica holding what they name, by `held` (retry: an MRTR
/// retry's parked call; task) and `outcome` (forwarded; unreachable: the client was told).
pub const REQUESTS_FORWARDED: &str = "mcp_requests_forwarded_total";
/// Session streams whose client lost its connection, by `outcome` (resumed: taken up
/// again; expired: not resumed in time, its call cancelled; refused: a `Last-Event-ID`
/// that named no stream of the session; restarted: a GET stream that could not be
/// resumed, opened anew).
pub const STREAM_RESUMPTIONS: &str = "mcp_stream_resumptions_total";
/// Log lines dropped because stderr was not read fast enough (`log.buffer_lines`).
pub const LOG_LINES_DROPPED: &str = "log_lines_dropped_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("metrics recorder installed once");
            let upkeep = handle.clone();
            // Histograms drain their buffers during upkeep; without it memory grows.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("thread spawns");
            metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route and status");
            metrics::describe_histogram!(
                HTTP_DURATION,
                metrics::Unit::Seconds,
                "HTTP request duration"
            );
            metrics::describe_counter!(MCP_REQUESTS, "MCP requests by server, method and outcome");
            metrics::describe_histogram!(
                MCP_DURATION,
                metrics::Unit::Seconds,
                "MCP request duration by server and method"
            );
            metrics::describe_gauge!(
                MCP_IN_FLIGHT,
                "MCP requests sent to an upstream and not yet answered"
            );
            metrics::describe_counter!(
                CONNECTIONS_TIMED_OUT,
                "Client connections closed after waiting on their client for the read or write timeout"
            );
            // Shown at 0 from the start, so that dashboards and rate() see the series
            // before the first closure.
            for timeout in ["read", "write"] {
                metrics::counter!(CONNECTIONS_TIMED_OUT, "timeout" => timeout).increment(0);
            }
            metrics::describe_counter!(
                NOTIFICATIONS_DROPPED,
                "Upstream notifications dropped for a client that read its stream too slowly"
            );
            metrics::describe_counter!(
                SERVER_REQUESTS_DECLINED,
                "Server requests answered with an error by the gateway for a client that was not taking them"
            );
            metrics::describe_counter!(
                REQUESTS_FORWARDED,
                "Requests carried to the replica holding what they name (an MRTR retry's parked call, a task, a stream to resume, a server request to answer), by held and outcome"
            );
            metrics::describe_counter!(
                STREAM_RESUMPTIONS,
                "Session streams taken up again by their client (resumed), not in time (expired), asked for in vain (refused), or opened anew (restarted)"
            );
            for outcome in ["resumed", "expired", "refused", "restarted"] {
                metrics::counter!(STREAM_RESUMPTIONS, "outcome" => outcome).increment(0);
            }
            metrics::describe_counter!(
                LOG_LINES_DROPPED,
                "Log lines dropped because stderr was not read fast enough"
            );
            handle
        })
        .clone()
}

/// The metrics as Prometheus text, with the counters kept outside the recorder brought
/// up to date first, and the upstreams' state as it is now.
pub fn render(handle: &PrometheusHandle, upstreams: &[UpstreamState<'_>]) -> String {
    metrics::counter!(LOG_LINES_DROPPED).absolute(super::dropped_lines());
    let mut text = handle.render();
    super::upstream_state::render(upstreams, &mut text);
    text
}
