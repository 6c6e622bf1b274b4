//! `http_requests_total{method,route,status}` and `http_request_duration_seconds{method,route}`
//! for every request, labelled with the route pattern (`/mcp/{server}`, never the path,
//! so label values stay few).
//!
//! A route layer, because only inside the router is the matched pattern known. Handles
//! are looked up once per label set and kept: registering a metric on each request
//! (building its key, hashing it, finding it in the registry) costs more than
//! recording it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use http::Method;
use metrics::{Counter, Histogram};

use super::metrics as m;

#[derive(Clone, Default)]
pub struct HttpMetricsLayer {
    handles: Arc<Handles>,
}

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            handles: Arc::clone(&self.handles),
        }
    }
}

#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    handles: Arc<Handles>,
}

impl<S> tower::Service<Request> for HttpMetrics<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        Recorded {
            method: method_label(request.method()),
            route,
            started: Instant::now(),
            handles: Arc::clone(&self.handles),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Recorded<F> {
        #[pin]
        inner: F,
        method: &'static str,
        route: Option<MatchedPath>,
        started: Instant,
        handles: Arc<Handles>,
    }
}

impl<F, E> Future for Recorded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &output {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let (count, duration) =
                this.handles
                    .get(this.method, route, response.status().as_u16());
            count.increment(1);
            duration.record(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(output)
    }
}

/// Methods are client input: anything unusual is "other".
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The handles registered so far, by route, then method and status.
#[derive(Default)]
struct Handles {
    by_route: Mutex<HashMap<Box<str>, Vec<Entry>>>,
}

struct Entry {
    method: &'static str,
    status: u16,
    count: Counter,
    duration: Histogram,
}

impl Handles {
    fn get(&self, method: &'static str, route: &str, status: u16) -> (Counter, Histogram) {
        let mut by_route = self.by_route.lock().unwrap();
        let entries = match by_route.get_mut(route) {
            Some(entries) => entries,
            None => by_route.entry(route.into()).or_default(),
        };
        if let Some(e) = entries
            .iter()
            .find(|e| e.method == method && e.status == status)
        {
            return (e.count.clone(), e.duration.clone());
        }
        let route = route.to_string();
        let count = metrics::counter!(m::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.to_string());
        let duration = metrics::histogram!(m::HTTP_DURATION, "method" => method, "route" => route);
        entries.push(Entry {
            method,
            status,
            count: count.clone(),
            duration: duration.clone(),
        });
        (count, duration)
    }
}
