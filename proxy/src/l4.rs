//! Plain TCP (L4) listeners: each accepted connection goes to one endpoint of a service, chosen by the
//! service's pool like HTTP requests are, then bytes are copied both ways until either side closes.
//! A failed connect is counted against the endpoint and the next endpoint is tried (up to three).

use crate::balance::{now_ns, Pick, Rng};
use crate::config::TcpListenerConfig;
use crate::Shared;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Serve one listener until shutdown.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    cfg: TcpListenerConfig,
    shared: Arc<Shared>,
    mut shutdown: ShutdownWatch,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, listen = %cfg.listen, "cannot serve TCP listener");
            return;
        }
    };
    let cfg = Arc::new(cfg);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                continue;
            }
        };
        let (shared, cfg) = (shared.clone(), cfg.clone());
        tokio::spawn(async move {
            if let Err(e) = proxy_connection(stream, &cfg, &shared).await {
                tracing::debug!(error = %e, "TCP proxy connection ended with an error");
            }
        });
    }
}

async fn proxy_connection(mut down: TcpStream, cfg: &TcpListenerConfig, shared: &Shared) -> std::io::Result<()> {
    let _ = down.set_nodelay(true);
    let pool = {
        let table = shared.table.load();
        table.pool(&cfg.namespace, &cfg.service, cfg.port.as_ref()).cloned()
    };
    let Some(pool) = pool else {
        return Err(std::io::Error::other(format!("no service {}/{}", cfg.namespace, cfg.service)));
    };
    let mut rng = Rng::new(now_ns());
    let mut tried = Vec::new();
    for _ in 0..3 {
        let now = now_ns();
        let Some(idx) = pool.pool.select(Pick { hash: None, tried: &tried, now }, &mut rng) else {
            break;
        };
        tried.push(idx as u32);
        let entry = &pool.pool.entries()[idx];
        let connect = tokio::time::timeout(shared.config.connect_timeout(), TcpStream::connect(entry.addr)).await;
        match connect {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                entry.state.start_request();
                pool.metrics.start();
                let result = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                entry.state.end_request();
                entry.state.record_success();
                let class = if result.is_ok() { 1 } else { 5 };
                pool.metrics.finish(class, now_ns().saturating_sub(now) / 1000);
                return result.map(|_| ());
            }
            _ => {
                entry.state.record_status_class(5);
                pool.pool.record_failure(idx, &shared.ejection, now_ns());
            }
        }
    }
    Err(std::io::Error::other("no endpoint accepted the connection"))
}
