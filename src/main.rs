//! The `tracespool` binary: parse the command line, load the configuration, run.

use std::process::ExitCode;

use clap::Parser;
use tracespool::app::{self, Control};
use tracespool::cli::{Cli, Command, LogFormatArg};
use tracespool::config::{Config, LogFormat};

fn main() -> ExitCode {
    // Everything tracespool creates — segments, metadata, the ledger, dead letters,
    // tool output — is owner-only (0700 directories, 0600 files), whatever the
    // inherited umask and whatever a library asks for.
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    let env = std::env::vars().collect();
    let mut cfg = match Config::load(cli.config.as_deref(), &env) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tracespool: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = cli.data_dir {
        cfg.storage.dir = dir;
    }
    if let Some(f) = cli.log_format {
        cfg.log.format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    match cli.command {
        Command::CheckConfig => {
            println!("# effective configuration (header values hidden)");
            print!("{}", cfg.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            tracespool::telemetry::init(cfg.log.format, &cfg.log.level);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("tracespool: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let run = async {
                // Before the start: a stop asked for during recovery is kept.
                let control = Control::default();
                spawn_signal_handler(&control);
                app::start(cfg, control).await?.wait().await
            };
            match runtime.block_on(run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, exit_code = e.exit_code(), "tracespool failed");
                    eprintln!("tracespool: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        tool => tracespool::tools::main(tool, cfg, cli.json),
    }
}

/// SIGTERM/SIGINT stop (a second one exits at once); SIGHUP reloads what can be
/// reloaded without a restart (the receivers' TLS certificate).
fn spawn_signal_handler(control: &Control) {
    let (stop, hup) = (control.stop.clone(), control.reload.clone());
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hangup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut stops = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hangup.recv() => {
                    tracing::info!(signal = "SIGHUP", "signal received: reloading TLS files");
                    hup.notify_one();
                    continue;
                }
            };
            if stops == 0 {
                tracing::info!(signal = name, "signal received");
                stop.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
            stops += 1;
        }
    });
}
