//! TCP forwarding: `direct-tcpip` channels (ssh -L) and `tcpip-forward` listeners (ssh -R) that
//! open `forwarded-tcpip` channels to the client.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info};

use crate::resolve::{Resolver, literal_addresses};
use crate::server::{ChannelKind, ConnectionState};

/// Connects to the target of a `direct-tcpip` request, then accepts the channel and relays it;
/// rejects the channel when the connection fails.
pub async fn direct_tcpip(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    host: String,
    port: u16,
    resolver: Arc<Resolver>,
    state: Arc<ConnectionState>,
) {
    let id = channel.id();
    let tcp = match resolver.connect(&host, port).await {
        Ok(tcp) => tcp,
        Err(error) => {
            info!(channel = %id, %error, "direct-tcpip target unreachable");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    state.channel_opened(id, ChannelKind::Forwarding);
    reply.accept().await;
    relay(tcp, channel).await;
    state.channel_closed(id);
    debug!(channel = %id, "direct-tcpip channel closed");
}

/// Copies bytes both ways until both sides have sent EOF; dropping the channel stream closes
/// the channel.
async fn relay(mut tcp: TcpStream, channel: Channel<Msg>) {
    let mut stream = channel.into_stream();
    if let Err(error) = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await {
        debug!(%error, "forwarded connection ended with an error");
    }
}

/// Addresses to bind for a `tcpip-forward` request: loopback for an empty address or
/// `localhost`, all interfaces for `*`, otherwise the given IP address or host name.
pub async fn bind_addresses(address: &str, resolver: &Resolver) -> io::Result<Vec<IpAddr>> {
    match address {
        "" | "localhost" => Ok(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        "*" => Ok(vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]),
        other => match literal_addresses(other) {
            Some(addresses) => Ok(addresses),
            None => resolver.lookup(other).await.map_err(io::Error::other),
        },
    }
}

/// Binds listeners on `addresses` with one common port (`port`, or the first one the kernel
/// assigns when it is 0). Addresses after the first that cannot be bound (no IPv6, say) are
/// skipped.
pub async fn bind(addresses: &[IpAddr], port: u16) -> io::Result<(Vec<TcpListener>, u16)> {
    let mut listeners = Vec::new();
    let mut port = port;
    let mut first_error = None;
    for address in addresses {
        match TcpListener::bind(SocketAddr::new(*address, port)).await {
            Ok(listener) => {
                if port == 0 {
                    port = listener.local_addr()?.port();
                }
                listeners.push(listener);
            }
            Err(error) => {
                debug!(%address, port, %error, "cannot bind forwarding listener");
                first_error.get_or_insert(error);
            }
        }
    }
    if listeners.is_empty() {
        return Err(first_error.unwrap_or_else(|| io::Error::other("no address to bind")));
    }
    Ok((listeners, port))
}

/// Accepts connections on the listeners and opens a `forwarded-tcpip` channel for each, naming
/// the address and port the client requested.
pub fn spawn_listeners(
    listeners: Vec<TcpListener>,
    requested_address: String,
    port: u16,
    handle: Handle,
    state: Arc<ConnectionState>,
) -> Vec<JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|listener| {
            let handle = handle.clone();
            let state = Arc::clone(&state);
            let address = requested_address.clone();
            let task = async move {
                loop {
                    let (tcp, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            debug!(%error, "accept on forwarding listener failed");
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let handle = handle.clone();
                    let state = Arc::clone(&state);
                    let address = address.clone();
                    tokio::spawn(
                        async move {
                            let opened = handle
                                .channel_open_forwarded_tcpip(
                                    address,
                                    u32::from(port),
                                    peer.ip().to_string(),
                                    u32::from(peer.port()),
                                )
                                .await;
                            match opened {
                                Ok(channel) => {
                                    let id = channel.id();
                                    state.channel_opened(id, ChannelKind::Forwarding);
                                    relay(tcp, channel).await;
                                    state.channel_closed(id);
                                }
                                Err(error) => {
                                    info!(%peer, %error, "client rejected the forwarded-tcpip channel")
                                }
                            }
                        }
                        .in_current_span(),
                    );
                }
            };
            tokio::spawn(task.in_current_span())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_by_default() {
        let resolver = Resolver::default();
        let addresses = bind_addresses("", &resolver).await.expect("addresses");
        assert!(addresses.iter().all(|address| address.is_loopback()));
        let addresses = bind_addresses("localhost", &resolver)
            .await
            .expect("addresses");
        assert!(addresses.iter().all(|address| address.is_loopback()));
        let addresses = bind_addresses("127.0.0.2", &resolver)
            .await
            .expect("addresses");
        assert_eq!(addresses, vec!["127.0.0.2".parse::<IpAddr>().expect("ip")]);
    }

    #[tokio::test]
    async fn binds_one_port_on_every_family() {
        let addresses = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let (listeners, port) = bind(&addresses, 0).await.expect("bind");
        assert_ne!(port, 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr().expect("addr").port(), port);
        }
    }
}
