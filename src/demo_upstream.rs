//! `gantry demo-upstream`: a small stdio MCP server built on rmcp. It makes the first run
//! work with nothing installed, and serves as the fast upstream for benchmarks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use tokio::sync::Mutex;

/// Values above this many entries are refused, so a client cannot grow the process.
const MAX_KEYS: usize = 10_000;
const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct DemoServer {
    store: Arc<Mutex<BTreeMap<String, String>>>,
    #[allow(dead_code, reason = "read by the tool_handler macro")]
    tool_router: ToolRouter<Self>,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// Text to send back.
    message: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: f64,
    b: f64,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct SetArgs {
    key: String,
    value: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct KeyArgs {
    key: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct SleepArgs {
    /// Milliseconds to wait, at most 600000.
    ms: u64,
}

#[tool_router]
impl DemoServer {
    pub fn new() -> Self {
        Self {
            store: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Returns the message it is given")]
    async fn echo(&self, Parameters(EchoArgs { message }): Parameters<EchoArgs>) -> String {
        message
    }

    #[tool(description = "Adds two numbers")]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Current time in UTC, RFC 3339")]
    async fn time(&self) -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    #[tool(description = "Stores a value under a key in this server's memory")]
    async fn kv_set(
        &self,
        Parameters(SetArgs { key, value }): Parameters<SetArgs>,
    ) -> Result<String, String> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("value is larger than {MAX_VALUE_BYTES} bytes"));
        }
        let mut store = self.store.lock().await;
        if store.len() >= MAX_KEYS && !store.contains_key(&key) {
            return Err(format!("store is full ({MAX_KEYS} keys)"));
        }
        store.insert(key, value);
        Ok("ok".into())
    }

    #[tool(description = "Reads the value stored under a key")]
    async fn kv_get(
        &self,
        Parameters(KeyArgs { key }): Parameters<KeyArgs>,
    ) -> Result<String, String> {
        self.store
            .lock()
            .await
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("no value for key '{key}'"))
    }

    #[tool(description = "Lists the stored keys")]
    async fn kv_list(&self) -> String {
        serde_json::to_string(&self.store.lock().await.keys().collect::<Vec<_>>())
            .expect("strings serialize")
    }

    #[tool(
        description = "Waits the given number of milliseconds, then answers (for timeout and cancellation tests)"
    )]
    async fn sleep(&self, Parameters(SleepArgs { ms }): Parameters<SleepArgs>) -> String {
        let ms = ms.min(600_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }
}

impl Default for DemoServer {
    fn default() -> Self {
        Self::new()
    }
}

#[tool_handler]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "gantry-demo",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("Demo tools: echo, add, time, kv_set/kv_get/kv_list, sleep.")
    }
}

/// Serves the demo on stdio (the default), or over Streamable HTTP at `http://ADDR/mcp`
/// when `http` is given — the direct baseline for benchmarks and a remote upstream for
/// tests. Every HTTP session shares one key-value store, as stdio clients do.
pub async fn run(http: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let Some(addr) = http else {
        let service = DemoServer::new().serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
        return Ok(());
    };
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let shared = DemoServer::new();
    let service = StreamableHttpService::new(
        move || Ok(shared.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("demo upstream on http://{}/mcp", listener.local_addr()?);
    // SSE answers are several small writes; without TCP_NODELAY each waits ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let router = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
