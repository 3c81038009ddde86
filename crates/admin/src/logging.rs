use std::ffi::OsString;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

use crate::Error;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with span fields, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(Error::InvalidLogFormat(other.to_string())),
        }
    }
}

/// Installs the global tracing subscriber, which writes to stderr. The level filter comes from
/// `RUST_LOG` and defaults to `info`. Text lines get ANSI colors only when stderr is a terminal
/// and `NO_COLOR` is unset or empty, so log files and collectors get plain text.
pub fn init_logging(format: LogFormat) -> Result<(), Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|error| Error::Logging(error.to_string()))
}

/// Decides whether log lines get ANSI colors, following the `NO_COLOR` convention
/// (<https://no-color.org>: any non-empty value turns colors off).
fn use_ansi(is_terminal: bool, no_color: Option<OsString>) -> bool {
    is_terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_known_names() {
        assert_eq!("text".parse::<LogFormat>().ok(), Some(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>().ok(), Some(LogFormat::Json));
    }

    #[test]
    fn ansi_only_on_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsString::new())));
        assert!(!use_ansi(true, Some(OsString::from("1"))));
        assert!(!use_ansi(false, None));
    }

    /// Set in the child process of `text_log_to_pipe_has_no_ansi_codes`.
    const LOG_CHILD_ENV: &str = "RENKU_SSH_ADMIN_LOG_CHILD";

    #[test]
    fn text_log_to_pipe_has_no_ansi_codes() {
        if std::env::var_os(LOG_CHILD_ENV).is_some() {
            init_logging(LogFormat::Text).expect("install subscriber");
            tracing::warn!(connection = 7, "piped log line");
            return;
        }
        // The test binary runs this test again as a child, so the subscriber is installed in a
        // fresh process whose stderr is a pipe, as when a service's output goes to a file.
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "logging::tests::text_log_to_pipe_has_no_ansi_codes",
                "--nocapture",
            ])
            .env(LOG_CHILD_ENV, "1")
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .output()
            .expect("run test binary");

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed: {stderr}");
        assert!(stderr.contains("piped log line"), "{stderr}");
        assert!(!stderr.contains('\x1b'), "ANSI escape in {stderr:?}");
    }

    #[test]
    fn log_format_rejects_unknown_name() {
        let error = "yaml"
            .parse::<LogFormat>()
            .expect_err("yaml is not a log format");
        assert!(error.to_string().contains("\"yaml\""), "{error}");
        assert!(error.to_string().contains("`json`"), "{error}");
    }
}
