//! Host name resolution for port forwarding without libc's NSS (`getaddrinfo` does not work
//! reliably in a statically linked binary). IP literals and `localhost` are handled here; other
//! names go to hickory-resolver, configured from `/etc/resolv.conf` and `/etc/hosts`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

/// Time allowed for one TCP connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures of resolving or connecting.
#[derive(Debug, Error)]
pub enum ResolveError {
    /// The system resolver configuration could not be read.
    #[error("cannot read the DNS configuration (/etc/resolv.conf): {0}")]
    Config(String),
    /// The name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Lookup {
        /// Name looked up.
        host: String,
        /// Resolver message.
        reason: String,
    },
    /// No address accepted a connection.
    #[error("cannot connect to {host} port {port}: {reason}")]
    Connect {
        /// Host requested.
        host: String,
        /// Port requested.
        port: u16,
        /// Last connection error.
        reason: String,
    },
}

/// Resolver whose DNS part is built on first use, so that hosts without `/etc/resolv.conf`
/// still forward to IP literals and `localhost`.
#[derive(Default)]
pub struct Resolver {
    dns: OnceCell<TokioResolver>,
}

/// Returns the addresses of `host` that need no DNS: IP literals (bracketed or not) and
/// `localhost`.
pub fn literal_addresses(host: &str) -> Option<Vec<IpAddr>> {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = trimmed.parse::<IpAddr>() {
        return Some(vec![address]);
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower == "localhost" || lower == "localhost." || lower.ends_with(".localhost") {
        return Some(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]);
    }
    None
}

impl Resolver {
    /// Resolves `host` to addresses.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Some(addresses) = literal_addresses(host) {
            return Ok(addresses);
        }
        let dns = self
            .dns
            .get_or_try_init(|| async {
                TokioResolver::builder_tokio()
                    .and_then(|builder| builder.build())
                    .map_err(|error| ResolveError::Config(error.to_string()))
            })
            .await?;
        let lookup = dns
            .lookup_ip(host)
            .await
            .map_err(|error| ResolveError::Lookup {
                host: host.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(lookup.iter().collect())
    }

    /// Connects to `host:port`, trying each address in turn.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ResolveError> {
        let addresses = self.lookup(host).await?;
        let mut last_error = String::from("no address");
        for address in addresses {
            let target = SocketAddr::new(address, port);
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(error)) => last_error = format!("{target}: {error}"),
                Err(_) => last_error = format!("{target}: timed out"),
            }
        }
        Err(ResolveError::Connect {
            host: host.to_owned(),
            port,
            reason: last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_need_no_dns() {
        assert_eq!(
            literal_addresses("127.0.0.1"),
            Some(vec!["127.0.0.1".parse().expect("ip")])
        );
        assert_eq!(
            literal_addresses("[::1]"),
            Some(vec!["::1".parse().expect("ip")])
        );
        assert_eq!(
            literal_addresses("LOCALHOST").map(|list| list.len()),
            Some(2)
        );
        assert_eq!(literal_addresses("example.org"), None);
    }

    #[tokio::test]
    async fn connects_to_loopback_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let resolver = Resolver::default();
        resolver.connect("localhost", port).await.expect("connect");
    }
}
