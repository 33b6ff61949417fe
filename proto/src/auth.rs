//! The cluster's shared token on the wire: `authorization: Bearer <token>` metadata, attached by
//! every client and checked by every server (both directions: coordinator and workers).

use std::fmt;
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

const HEADER: &str = "authorization";

/// The shared secret. `Debug` and `Display` print `***`, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(Arc<str>);

impl ClusterToken {
    /// `None` for an empty string (no token: an open cluster). A token must be printable ASCII.
    pub fn new(token: &str) -> Result<Option<Self>, TokenError> {
        let t = token.trim();
        if t.is_empty() {
            return Ok(None);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError);
        }
        Ok(Some(Self(t.into())))
    }

    fn header(&self) -> MetadataValue<Ascii> {
        format!("Bearer {}", self.0)
            .parse()
            .expect("checked printable ASCII")
    }

    fn matches(&self, value: &[u8]) -> bool {
        let want = format!("Bearer {}", self.0);
        // Constant time in the token's content.
        value.len() == want.len()
            && value
                .iter()
                .zip(want.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterToken(***)")
    }
}

impl fmt::Display for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cluster token must be printable ASCII without spaces")]
pub struct TokenError;

/// Server side: rejects requests without the token (when the server has one).
#[derive(Debug, Clone)]
pub struct RequireToken(pub Option<ClusterToken>);

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else { return Ok(req) };
        match req.metadata().get(HEADER) {
            Some(v) if token.matches(v.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong cluster token")),
            None => Err(Status::unauthenticated(
                "this cluster needs a token: pass --token or set IBENCH_CLUSTER_TOKEN",
            )),
        }
    }
}

/// Client side: attaches the token to every request.
#[derive(Debug, Clone)]
pub struct AttachToken(pub Option<ClusterToken>);

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(HEADER, t.header());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_checked_and_never_printed() {
        let t = ClusterToken::new(" s3cret ").unwrap().unwrap();
        assert_eq!(format!("{t:?} {t}"), "ClusterToken(***) ***");
        assert!(ClusterToken::new("").unwrap().is_none());
        assert!(ClusterToken::new("two words").is_err());
        let mut attach = AttachToken(Some(t.clone()));
        let mut require = RequireToken(Some(t));
        let req = attach.call(Request::new(())).unwrap();
        assert!(require.call(req).is_ok());
        let e = require.call(Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let other = AttachToken(ClusterToken::new("s3creT").unwrap())
            .call(Request::new(()))
            .unwrap();
        assert_eq!(
            require.call(other).unwrap_err().message(),
            "wrong cluster token"
        );
        // An open server lets everything through.
        assert!(RequireToken(None).call(Request::new(())).is_ok());
    }
}
