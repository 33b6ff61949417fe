//! The IBench cluster wire format: gRPC package `ibench.v1` (ibench/v1/cluster.proto), the shared
//! token's metadata, the message size limits, and the conversions to and from domain types
//! ([`convert`]).

pub mod auth;
pub mod convert;
pub mod tls;

/// The generated messages, clients and servers of `ibench.v1`.
pub mod v1 {
    tonic::include_proto!("ibench.v1");
}

/// The API version of this package, sent by workers when they register.
pub const API_VERSION: u32 = 1;

/// Largest encoded message either side accepts or sends: a prefill of 32 sequences x 512 tokens
/// x 4096 hidden f32 is 256 MiB, so big prefills are split by the sender, never by raising this.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub use auth::{AttachToken, ClusterToken, RequireToken};

/// A client of a worker's stage service that sends the token.
pub type StageWorkerClient =
    v1::stage_worker_client::StageWorkerClient<InterceptedService<Channel, AttachToken>>;
/// A client of the coordinator's model service that sends the token.
pub type ModelsClient = v1::models_client::ModelsClient<InterceptedService<Channel, AttachToken>>;
/// A client of the coordinator's service that sends the token.
pub type CoordinatorClient =
    v1::coordinator_client::CoordinatorClient<InterceptedService<Channel, AttachToken>>;

/// A URL the cluster cannot connect to as configured.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{url}: {why}")]
    Scheme { url: String, why: &'static str },
}

/// An endpoint with the cluster's connection settings: bounded connect time, keep-alives that
/// notice a dead peer within seconds, no Nagle delay on small decode steps; TLS when `tls` is
/// given, which then needs an `https://` URL (and `https://` needs `tls`), so a cluster set up
/// for TLS never falls back to plain text.
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, EndpointError> {
    let https = url.starts_with("https://");
    match (tls, https) {
        (Some(_), false) => {
            return Err(EndpointError::Scheme {
                url: url.into(),
                why: "TLS is configured (--tls-ca), so the URL must start with https://",
            })
        }
        (None, true) => {
            return Err(EndpointError::Scheme {
                url: url.into(),
                why: "an https:// URL needs the CA of the cluster's certificates (--tls-ca)",
            })
        }
        _ => {}
    }
    let mut ep = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(t) = tls {
        ep = ep.tls_config(t.clone())?;
    }
    Ok(ep)
}

/// Connects now (an unreachable URL fails here, with the reason).
pub async fn connect(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, EndpointError> {
    Ok(endpoint(url, tls)?.connect().await?)
}

pub fn stage_worker_client(channel: Channel, token: Option<ClusterToken>) -> StageWorkerClient {
    v1::stage_worker_client::StageWorkerClient::with_interceptor(channel, AttachToken(token))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn coordinator_client(channel: Channel, token: Option<ClusterToken>) -> CoordinatorClient {
    v1::coordinator_client::CoordinatorClient::with_interceptor(channel, AttachToken(token))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn models_client(channel: Channel, token: Option<ClusterToken>) -> ModelsClient {
    v1::models_client::ModelsClient::with_interceptor(channel, AttachToken(token))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The coordinator's model service behind the token check and the size limits.
pub fn models_server<T: v1::models_server::Models>(
    service: T,
    token: Option<ClusterToken>,
) -> InterceptedService<v1::models_server::ModelsServer<T>, RequireToken> {
    InterceptedService::new(
        v1::models_server::ModelsServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        RequireToken(token),
    )
}

/// A worker's stage service behind the token check and the size limits.
pub fn stage_worker_server<T: v1::stage_worker_server::StageWorker>(
    service: T,
    token: Option<ClusterToken>,
) -> InterceptedService<v1::stage_worker_server::StageWorkerServer<T>, RequireToken> {
    InterceptedService::new(
        v1::stage_worker_server::StageWorkerServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        RequireToken(token),
    )
}

/// The coordinator's service behind the token check and the size limits.
pub fn coordinator_server<T: v1::coordinator_server::Coordinator>(
    service: T,
    token: Option<ClusterToken>,
) -> InterceptedService<v1::coordinator_server::CoordinatorServer<T>, RequireToken> {
    InterceptedService::new(
        v1::coordinator_server::CoordinatorServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        RequireToken(token),
    )
}
