//! `infer-cli serve`: load the model, start the engine, serve HTTP until SIGINT/SIGTERM.

use std::time::Duration;

use infer_core::Error;
use infer_core::engine::{Engine, EngineConfig};
use infer_server::ServerConfig;

use crate::args::ServeArgs;

pub fn serve(a: ServeArgs) -> infer_core::Result<()> {
    let model = crate::load(&a.model)?;
    let cfg = EngineConfig {
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        kv_memory_bytes: a.kv_cache_mb.map(|mb| mb << 20),
        ..EngineConfig::default()
    };
    let engine = Engine::start(model, cfg)?;
    let server = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        model_name: a.served_model_name.clone(),
        shutdown_grace: Duration::from_secs(a.shutdown_grace_s),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))?;
    let result = runtime.block_on(async {
        let addr = format!("{}:{}", server.host, server.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| Error::io(&addr, e))?;
        let local = listener.local_addr().map_err(|e| Error::io(&addr, e))?;
        let info = engine.info();
        eprintln!(
            "serving {} on http://{local} ({}, context {}, {} KV blocks of {}, batch {})",
            server.model_name.as_deref().unwrap_or(&info.model_id),
            info.device,
            info.context_length,
            info.kv_blocks,
            info.block_size,
            info.max_batch
        );
        infer_server::serve(engine.clone(), listener, server, infer_server::shutdown_signal())
            .await
            .map_err(|e| Error::io(&addr, e))
    });
    // `serve` already waited (bounded) for the engine thread; do not wait again for any
    // blocking task still running.
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("server stopped");
    result
}
