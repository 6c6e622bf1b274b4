//! Keeps the gateway's registered servers equal to the control plane's registry: read at
//! start, then again on every change notice (PostgreSQL `LISTEN gantry_registry`, or
//! in-process when API and gateway share the process) and every `registry.poll_secs`.

use std::sync::Arc;
use std::time::Duration;

use super::Gateway;
use crate::config::UpstreamConfig;
use crate::store::Store;
use crate::upstream::Registered;
use crate::vault::Vault;

pub const CHANNEL: &str = "gantry_registry";

/// Reads the registry and applies it; a failure keeps what runs and is retried.
async fn reload(gw: &Gateway, store: &Store) {
    match store.all_servers().await {
        Ok(servers) => {
            let mut desired: Vec<Registered> = servers
                .into_iter()
                .map(|s| Registered {
                    tenant_id: s.tenant_id,
                    name: s.name,
                    config: s.settings,
                    version: s.version,
                })
                .collect();
            resolve_vault_references(gw, &mut desired).await;
            tracing::debug!(servers = desired.len(), "server registry read");
            gw.upstreams.sync(&desired);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the server registry; keeping the servers that run")
        }
    }
}

fn has_vault_reference(config: &UpstreamConfig) -> bool {
    config
        .env
        .values()
        .chain(config.headers.values())
        .any(|v| v.starts_with("vault:"))
}

/// `vault:` references in registered settings are read here, when the gateway takes the
/// settings up (`env:` and `file:` ones when a connection starts). A server whose
/// secret cannot be read keeps running as it was, or does not start; the log says why.
async fn resolve_vault_references(gw: &Gateway, desired: &mut Vec<Registered>) {
    if !desired.iter().any(|r| has_vault_reference(&r.config)) {
        return;
    }
    let mut vault = match Vault::login(&gw.config.vault.effective()).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "registered servers refer to Vault, which cannot be used now");
            None
        }
    };
    let mut kept = Vec::with_capacity(desired.len());
    for mut registered in desired.drain(..) {
        if !has_vault_reference(&registered.config) {
            kept.push(registered);
            continue;
        }
        let mut failure = None;
        if let Some(vault) = vault.as_mut() {
            let config = &mut registered.config;
            for (field, values) in [("env", &mut config.env), ("headers", &mut config.headers)] {
                for (key, value) in values.iter_mut() {
                    if value.starts_with("vault:") {
                        match vault.resolve(value).await {
                            Ok(secret) => *value = secret,
                            Err(e) => failure = Some(format!("{field}.{key}: {e}")),
                        }
                    }
                }
            }
        } else {
            failure = Some("Vault is unavailable".into());
        }
        match failure {
            None => kept.push(registered),
            Some(reason) => {
                // The running instance (same version) already holds the resolved values.
                let running = gw
                    .upstreams
                    .get(&registered.key())
                    .filter(|u| u.version == registered.version);
                tracing::warn!(server = %registered.key(), %reason, kept_running = running.is_some(), "secret of a registered server not read");
                if let Some(running) = running {
                    registered.config = running.config.clone();
                    kept.push(registered);
                }
            }
        }
    }
    *desired = kept;
}

/// Listens for changes, applies the registry once, then keeps following it in the
/// background. Listening starts first, so no change between the two is missed; the
/// gateway reports ready only after this returns.
pub async fn start(gw: Arc<Gateway>, store: Store, listen_url: Option<String>) {
    let mut listener = match &listen_url {
        Some(url) => listen(url).await,
        None => None,
    };
    reload(&gw, &store).await;
    tokio::spawn(async move {
        let poll = Duration::from_secs(gw.config.registry.poll_secs.max(1));
        loop {
            let notice = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()).map_err(|e| e.to_string()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = gw.shutdown.cancelled() => return,
                _ = gw.registry_changed.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                outcome = notice => if let Err(e) = outcome {
                    tracing::warn!(error = %e, "registry notifications interrupted; reconnecting");
                    listener = None;
                }
            }
            if listener.is_none()
                && let Some(url) = &listen_url
            {
                listener = listen(url).await;
            }
            reload(&gw, &store).await;
        }
    });
}

async fn listen(url: &str) -> Option<sqlx::postgres::PgListener> {
    let attempt = async {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match attempt.await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for registry changes; polling only");
            None
        }
    }
}
