//! The `replhub` command line: parses arguments, sets up logging, and hands
//! over to the library. Exit codes: 0 success, 1 invalid config or failed
//! run, 2 usage errors (clap), 130 a second interrupt during shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "replhub",
    version,
    about = "Replicates Redis key namespaces to and from a remote Redis behind Webdis and mutual TLS"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run every link in the config file until SIGINT/SIGTERM; SIGHUP or a change of the file reloads it.
    Run {
        /// Config file [default: $REPLHUB_CONFIG, then ./replhub.yaml]
        #[arg(short, long, env = "REPLHUB_CONFIG", default_value = "replhub.yaml")]
        config: PathBuf,
    },
    /// Validate the config file and print every error as FILE:LINE:COL: message.
    Check {
        /// Config file [default: $REPLHUB_CONFIG, then ./replhub.yaml]
        #[arg(short, long, env = "REPLHUB_CONFIG", default_value = "replhub.yaml")]
        config: PathBuf,
        /// Also dial every local Redis and every remote (TLS handshake, then PING through Webdis).
        #[arg(long)]
        connect: bool,
    },
    /// Print the JSON Schema (draft 2020-12) of the config file.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Schema => {
            print!("{}", replhub::config::model::schema_text());
            ExitCode::SUCCESS
        }
        Command::Check { config, connect } => {
            let mut stdout = std::io::stdout();
            let mut ok = replhub::check::check_file(&config, &mut stdout);
            if ok && connect {
                ok = replhub::check::connect_all(&config, &mut stdout);
            }
            if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Command::Run { config } => replhub::run::main(&config),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}
