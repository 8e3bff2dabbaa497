//! Logging set-up shared by the `kiln-executor` and `kiln-warmer` binaries: the logging flags
//! both take ([`LogFlags`]), level from `--verbosity` (or `KILN_LOG`), format from
//! `--log-format`, to stderr. Configures only.

use clap::{ArgAction, Args, ValueEnum};

/// `--log-format`, as kaniko spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Color,
    Json,
}

/// `--verbosity`, kaniko's logrus levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Verbosity {
    Panic,
    Fatal,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// The logging flags kiln-executor and kiln-warmer both take, defined once so both spell,
/// default and document them alike. Flattened into each program's command line with
/// `#[command(flatten)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct LogFlags {
    /// Log level.
    #[arg(short = 'v', long, value_enum, default_value = "info")]
    pub verbosity: Verbosity,

    /// Log format.
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Prefix log lines with timestamps.
    #[arg(long = "log-timestamp", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = crate::goflag::parse_bool)]
    pub log_timestamp: bool,
}

impl LogFlags {
    /// [`init`] with these flags.
    pub fn init(&self) {
        init(self.verbosity, self.log_format, self.log_timestamp);
    }
}

/// The crates whose events are shown at the chosen level; everything else (dependencies) only
/// from warnings up.
const OWN_CRATES: &[&str] = &[
    "kiln_executor",
    "kiln_warmer",
    "kiln_oci",
    "kiln_dockerfile",
    "kiln_common",
];

/// Install the global tracing subscriber. Call once, at the start of `main`.
pub fn init(verbosity: Verbosity, format: LogFormat, timestamps: bool) {
    let level = match verbosity {
        Verbosity::Panic | Verbosity::Fatal | Verbosity::Error => "error",
        Verbosity::Warn => "warn",
        Verbosity::Info => "info",
        Verbosity::Debug => "debug",
        Verbosity::Trace => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{}warn",
            OWN_CRATES
                .iter()
                .map(|c| format!("{c}={level},"))
                .collect::<String>()
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match (format, timestamps) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Color, true) => builder.with_ansi(true).init(),
        (LogFormat::Color, false) => builder.with_ansi(true).without_time().init(),
        (LogFormat::Text, true) => builder.with_ansi(false).init(),
        (LogFormat::Text, false) => builder.with_ansi(false).without_time().init(),
    }
}
