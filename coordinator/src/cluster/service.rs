//! The coordinator's gRPC service: workers register and heartbeat. Served with the gRPC health
//! service beside it; a background task expires workers that stop heartbeating.

use std::sync::Arc;
use std::time::Duration;

use ibench_proto::v1 as pb;
use ibench_shared::placement::DeviceInfo;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::models::ModelsService;
use super::registry::WorkerRegistry;
use crate::eval::pool::ModelPool;

/// The Coordinator service over a shared registry.
pub struct CoordinatorService {
    registry: Arc<WorkerRegistry>,
}

impl CoordinatorService {
    pub fn new(registry: Arc<WorkerRegistry>) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    #[instrument(skip_all, fields(worker = %req.get_ref().name, address = %req.get_ref().address))]
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        if r.api_version != ibench_proto::API_VERSION {
            return Err(Status::invalid_argument(format!(
                "the worker speaks API version {}, this coordinator {}: run the same ibench version on both",
                r.api_version,
                ibench_proto::API_VERSION
            )));
        }
        if r.name.is_empty() || r.address.is_empty() {
            return Err(Status::invalid_argument(
                "a worker needs a name and an address",
            ));
        }
        let models: Vec<String> = r
            .devices
            .iter()
            .map(|d| {
                format!(
                    "{} {} ({:.1}/{:.1} GiB free)",
                    d.name,
                    d.model,
                    d.free_bytes as f64 / (1u64 << 30) as f64,
                    d.total_bytes as f64 / (1u64 << 30) as f64
                )
            })
            .collect();
        let devices: Vec<DeviceInfo> = r.devices.into_iter().map(Into::into).collect();
        let id = self
            .registry
            .register(&r.name, &r.address, devices.clone())
            .map_err(Status::invalid_argument)?;
        tracing::info!(worker_id = %id, devices = ?models, version = %r.version, "worker registered");
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id,
            heartbeat_interval_ms: self.registry.heartbeat_interval().as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let known = self.registry.heartbeat(
            &r.worker_id,
            r.devices.into_iter().map(Into::into).collect(),
        );
        Ok(Response::new(pb::HeartbeatResponse { known }))
    }
}

/// Serves the Coordinator service, the Models service over `models` (when given) and gRPC health
/// on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<WorkerRegistry>,
    models: Option<Arc<dyn ModelPool>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::coordinator_server::CoordinatorServer<CoordinatorService>>()
        .await;
    if models.is_some() {
        health
            .set_serving::<pb::models_server::ModelsServer<ModelsService>>()
            .await;
    }
    let expiry = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(registry.heartbeat_interval());
            loop {
                tick.tick().await;
                registry.expire();
            }
        })
    };
    let token = registry.token().cloned();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &registry.tls().server {
        builder = builder.tls_config(tls.clone())?;
    }
    let result = builder
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(ibench_proto::coordinator_server(
            CoordinatorService::new(registry),
            token.clone(),
        ))
        .add_optional_service(
            models.map(|pool| ibench_proto::models_server(ModelsService::new(pool), token)),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    expiry.abort();
    result
}
