use std::fmt::Debug;
use std::time::Duration;

use anyhow::bail;
use kube::Api;
use serde::de::DeserializeOwned;

/// Polls `name` until `condition` holds for it, and returns the object that satisfied it.
///
/// Fails after `timeout` with the last state seen, so a failing test shows what it waited on.
pub async fn wait_for<K, F>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    mut condition: F,
) -> anyhow::Result<K>
where
    K: Clone + DeserializeOwned + Debug,
    F: FnMut(&K) -> bool,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(object) = api.get_opt(name).await? {
            if condition(&object) {
                return Ok(object);
            }
            last = Some(object);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {name}; last state: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `name` no longer exists.
pub async fn wait_until_deleted<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()>
where
    K: Clone + DeserializeOwned + Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {name} to be deleted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
