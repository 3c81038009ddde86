use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// Writes a Pod's `status` through the status subresource, as the kubelet would.
pub async fn set_pod_status(api: &Api<Pod>, name: &str, status: PodStatus) -> anyhow::Result<Pod> {
    let patch = json!({ "status": status });
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// Marks a Pod Running and Ready at `pod_ip`, with every container of its spec running.
pub async fn mark_pod_running(api: &Api<Pod>, name: &str, pod_ip: &str) -> anyhow::Result<Pod> {
    let pod = api.get(name).await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let containers = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default();
    let container_statuses = containers
        .iter()
        .map(|container| ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: true,
            restart_count: 0,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(now.clone()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .into_iter()
        .map(|type_| PodCondition {
            type_: type_.to_string(),
            status: "True".to_string(),
            last_transition_time: Some(now.clone()),
            ..Default::default()
        })
        .collect();
    let status = PodStatus {
        phase: Some("Running".to_string()),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        host_ip: Some("127.0.0.1".to_string()),
        start_time: Some(now),
        conditions: Some(conditions),
        container_statuses: Some(container_statuses),
        ..Default::default()
    };
    set_pod_status(api, name, status).await
}
