//! A TCP relay on loopback in front of Keycloak. Shutting it down closes its port and every
//! relayed connection, which to a client is the same as the identity provider going away.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct Relay {
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    /// Starts relaying connections on a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay port");
        let addr = listener.local_addr().expect("relay address");
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();

        let connection_tasks = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connection_tasks
                    .lock()
                    .expect("relay task list")
                    .push(relay.abort_handle());
            }
        });
        tasks
            .lock()
            .expect("relay task list")
            .push(accept.abort_handle());
        Relay { addr, tasks }
    }

    /// Stops accepting and drops every relayed connection. Callable from synchronous code.
    pub fn shutdown(&self) {
        for task in self.tasks.lock().expect("relay task list").drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}
