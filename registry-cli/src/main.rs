//! `registry`: register, discover and route over etcd, Consul, Redis or memory, from the shell.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use registry::redact::Secrets;
use registry::url::BackendUrl;
use registry::{Error, ErrorKind};

mod commands;
mod demo;
mod output;

/// Exit code for a usage error (bad arguments, bad URL).
const EXIT_USAGE: u8 = 2;
/// Exit code for a backend error (unreachable, refused credentials, timeout).
const EXIT_BACKEND: u8 = 3;
/// Exit code when what was asked for does not exist (no instance to route a key to).
const EXIT_NOT_FOUND: u8 = 4;

/// The right forms of a backend URL: in the help, and under the error for a malformed one.
const BACKEND_URLS: &str = "Backend URLs:\n  memory://                          in-process store (the default)\n  etcd://host:2379[,host:2379][/ns]  etcd (etcds:// for TLS)\n  consul://host:8500[/ns]            Consul (consuls:// for HTTPS)\n  redis://[user:pass@]host:6379      Redis (rediss:// for TLS)";

/// Service registration, discovery and key routing over etcd, Consul, Redis or memory.
///
/// Every command works against the backend named by --backend (or REGISTRY_BACKEND). The default,
/// memory://, is an in-process store: fine for `demo`, empty for everything else.
#[derive(Parser, Debug)]
#[command(name = "registry", version, propagate_version = true)]
#[command(
    after_help = format!("{BACKEND_URLS}\n\nExit codes: 0 ok, 2 usage error, 3 backend error, 4 not found.")
)]
struct Cli {
    /// Backend URL, e.g. etcd://127.0.0.1:2379
    #[arg(
        long,
        short,
        global = true,
        env = "REGISTRY_BACKEND",
        hide_env_values = true,
        default_value = "memory://"
    )]
    backend: String,

    /// Key namespace instances live under
    #[arg(
        long,
        global = true,
        env = "REGISTRY_NAMESPACE",
        default_value = "registry"
    )]
    namespace: String,

    /// Log details to stderr (repeat for more)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Tell the whole story in under a minute: register, discover, route, go offline, crash, drain
    Demo(demo::DemoArgs),
    /// Register an instance and keep it alive until Ctrl-C (which deregisters it)
    Register(commands::RegisterArgs),
    /// List instances (of one service, or of all)
    List(commands::ListArgs),
    /// Print changes to the online instances as they happen, one line each
    Watch(commands::WatchArgs),
    /// Show which instance(s) own a key by consistent hashing
    Find(commands::FindArgs),
    /// Serve the namespace over HTTP: JSON API, change stream (SSE), Prometheus SD, /metrics
    Serve(commands::ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// Parses `15s`, `500ms`, `2m`, `1h`, or a number of seconds (for clap), saying why a value is
/// refused (not a duration, negative, too large).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    registry::config::try_parse_duration(s).map_err(|why| format!("`{s}` {why}"))
}

fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Unsupported => EXIT_USAGE,
        ErrorKind::NotFound | ErrorKind::ServiceUnavailable => EXIT_NOT_FOUND,
        _ => EXIT_BACKEND,
    }
}

/// Every secret this process was given: the backend URL's password and token (`backend`, or the
/// `text` it was parsed from when it does not parse), and the values of environment variables that
/// hold credentials or URLs. Whatever the process prints or logs goes through [`Secrets::mask`] as
/// a last line of defence (the library already shows URLs redacted).
fn secrets(backend: Option<&BackendUrl>, text: &str) -> Arc<Secrets> {
    let mut s = match backend {
        Some(url) => url.secrets(),
        None => Secrets::from_url(text),
    };
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        let upper = name.to_ascii_uppercase();
        if ["PASSWORD", "TOKEN", "SECRET", "PASSWD"]
            .iter()
            .any(|w| upper.contains(w))
        {
            s.add(value);
        } else if value.contains("://") {
            s.add_url(value);
        }
    }
    Arc::new(s)
}

/// Standard error with every known secret masked; the log writer.
struct MaskedStderr(Arc<Secrets>);

impl std::io::Write for MaskedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer writes each event with one call, so a secret is never split across calls.
        let text = self.0.mask(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The backend URL is parsed here, once, and handed down as it parsed.
    let backend = BackendUrl::parse(&cli.backend);
    let secrets = secrets(backend.as_ref().ok(), &cli.backend);
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info,registry_core=info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGISTRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        // Colours only for a terminal: a log file or a container's log gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer({
            let secrets = secrets.clone();
            move || MaskedStderr(secrets.clone())
        })
        .init();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "registry",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let backend = match backend {
        Ok(url) => url,
        Err(e) => {
            let e = e.masked(&secrets);
            eprintln!(
                "{} {}\n\n{BACKEND_URLS}",
                output::red("error:"),
                describe(&e)
            );
            return ExitCode::from(exit_code(&e));
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_BACKEND);
        }
    };
    let result = rt.block_on(async move {
        let ctx = commands::Context::new(backend, cli.namespace.clone());
        match cli.command {
            Command::Demo(a) => demo::run(&ctx, a).await,
            Command::Register(a) => commands::register(&ctx, a).await,
            Command::List(a) => commands::list(&ctx, a).await,
            Command::Watch(a) => commands::watch(&ctx, a).await,
            Command::Find(a) => commands::find(&ctx, a).await,
            Command::Serve(a) => commands::serve(&ctx, a).await,
            Command::Completions { .. } => Ok(()),
        }
    });
    // Background keep-alives of a finished command must not hold the process.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "{} {}",
                output::red("error:"),
                describe(&e.clone().masked(&secrets))
            );
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The message with its chain of causes, without repeating a cause already in the message; each
/// part made safe for a terminal (a cause may quote what a server sent).
fn describe(e: &Error) -> String {
    let mut msg = output::clean(e.message());
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = output::clean(&s.to_string());
        if !msg.contains(&text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_backend_url_secrets_are_masked_whether_it_parses_or_not() {
        let url: BackendUrl = "redis://:hunter22@h?token=tok-value".parse().unwrap();
        let s = secrets(Some(&url), "redis://h");
        assert_eq!(s.mask("hunter22, tok-value"), "***, ***");
        let s = secrets(None, "redis://:hunter22@h:x");
        assert_eq!(s.mask("hunter22"), "***");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    /// `--ttl 1e300s` panicked in `Duration::from_secs_f64`; it is now a usage error that says why.
    #[test]
    fn huge_and_nan_durations_are_usage_errors_that_say_why() {
        let e = parse_duration("1e300s").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(
            parse_duration("18446744073709551615m")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_duration("NaN")
                .unwrap_err()
                .contains("not a finite number")
        );
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        let parsed = Cli::try_parse_from([
            "registry", "register", "web", "--id", "a", "--addr", "x:1", "--ttl", "1e300s",
        ]);
        let e = parsed.unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }
}
