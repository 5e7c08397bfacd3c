//! `classguard serve`: opens the store, then runs the service until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::service::{self, Config, ServiceError};
use crate::store::Store;

/// Where a store named by `--database` (or the default) lives.
pub fn open_store(database: Option<&str>) -> Result<Store, crate::store::StoreError> {
    match database {
        Some(d) => Store::open_any(d),
        None => Store::open_default(),
    }
}

/// The default data directory: next to the default store (`.../classguard/service`).
pub fn default_data_dir() -> Result<PathBuf, crate::store::StoreError> {
    let store = Store::default_path()?;
    Ok(store
        .parent()
        .map(|p| p.join("service"))
        .unwrap_or_else(|| PathBuf::from("classguard-service")))
}

pub fn run(
    store: Store,
    config: Config,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServiceError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve")
        .build()
        .map_err(ServiceError::Serve)?;
    rt.block_on(service::serve(
        Arc::new(store),
        config,
        shutdown_signal(),
        on_listening,
    ))
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
