//! Who is calling. Until authentication lands this is the peer address; the
//! audit trail and the logs take it from here, so callers' identities will
//! flow through unchanged once they are authenticated.
use tonic::Request;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Self {
        match request.remote_addr() {
            Some(addr) => Caller(format!("peer:{addr}")),
            None => Caller("peer:unknown".into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
