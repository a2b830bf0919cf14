//! The crier binary: parse the configuration, start logging, serve until SIGTERM or SIGINT,
//! reload the token keys on SIGHUP; or `crier token`, to mint and check tokens.

use std::process::ExitCode;

use clap::Parser as _;
use clap::error::ErrorKind;
use crier::{Config, LogFormat};

/// Exit status for a bad command line or environment (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit status when the server cannot start (EX_OSERR).
const EXIT_OS_ERROR: u8 = 71;
/// Exit status when a second SIGTERM or SIGINT stopped the server before it had drained
/// (128 + SIGINT, as a shell reports an interrupted command).
const EXIT_INTERRUPTED: i32 = 130;

/// jemalloc: an idle stream's few long-lived allocations sit in slabs of their size, apart
/// from the short-lived buffers of connecting and publishing, so a node holding many idle
/// streams keeps less memory than on glibc's malloc (`benches/README.md`, idle memory).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Returns the pages jemalloc keeps free in all its arenas to the system at once (after a flood
/// of topics is dropped), rather than over its decay time.
#[cfg(not(target_env = "msvc"))]
fn purge_jemalloc() {
    // `arena.<MALLCTL_ARENAS_ALL>.purge` (4096 in jemalloc 5): a command that reads and writes
    // nothing.
    // SAFETY: the name is NUL-terminated and no value is read or written (null pointers and a
    // zero length, as a void mallctl requires).
    let failed = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if failed != 0 {
        tracing::debug!(error = failed, "jemalloc did not purge its arenas");
    }
}

fn main() -> ExitCode {
    #[cfg(not(target_env = "msvc"))]
    crier::set_free_memory_release(purge_jemalloc);
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|first| first == "token") {
        return ExitCode::from(crier::token_command(args.collect()));
    }
    let config = match Config::try_parse().and_then(Config::checked) {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(config.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(EXIT_OS_ERROR);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::from(EXIT_OS_ERROR)
        }
    }
}

async fn run(config: Config) -> std::io::Result<()> {
    // Before the address is announced: a signal sent once it is must find its handler.
    let stop = shutdown_signal();
    let listener = crier::bind(config.listen).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
    })?;
    tracing::info!(listen = %listener.local_addr()?, "crier listening");
    let described = config.clone();
    let app = crier::App::new(config)?;
    described.log_startup();
    tokio::spawn(reload_on_hangup(app.clone()));
    crier::serve(listener, app, stop).await
}

/// SIGHUP reads the token key files and the TLS certificate again; connections stay open.
async fn reload_on_hangup(app: std::sync::Arc<crier::App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; key files will not be reloaded");
        return;
    };
    while hangup.recv().await.is_some() {
        match app.reload_credentials() {
            Ok(()) => tracing::info!("SIGHUP: token keys and TLS certificate reloaded"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: the token keys in use stay"),
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves at the first of them, and
/// a second one stops the process at once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::warn!("cannot install signal handlers; stop the server by killing it");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        // A second one means "now": the drain is not waited for.
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: stopping at once, without draining");
            std::process::exit(EXIT_INTERRUPTED);
        });
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
