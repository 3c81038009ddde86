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

/// Installs the global tracing subscriber. The level filter comes from `RUST_LOG` and defaults
/// to `info`.
pub fn init_logging(format: LogFormat) -> Result<(), Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_known_names() {
        assert_eq!("text".parse::<LogFormat>().ok(), Some(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>().ok(), Some(LogFormat::Json));
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
