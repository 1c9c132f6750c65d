//! Who is calling. With authentication configured, the middleware puts the
//! authenticated caller (its name in the callers file, and the data systems
//! it is limited to) into the request's extensions; without it (the
//! loopback quick start) the caller is the peer address. The audit trail and
//! the logs take it from here.
use std::sync::Arc;

use tonic::Request;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    name: String,
    /// The data systems whose tasks this caller may see and work on; `None`
    /// for every system.
    data_systems: Option<Arc<[String]>>,
    /// Whether `name` was authenticated (a name from the callers file) or is
    /// only the peer's address.
    authenticated: bool,
}

impl Caller {
    /// An authenticated caller.
    pub fn authenticated(name: &str, data_systems: Option<Arc<[String]>>) -> Self {
        Caller {
            name: name.to_owned(),
            data_systems,
            authenticated: true,
        }
    }

    /// A caller known only by where it connects from (no authentication).
    pub fn peer(addr: Option<std::net::SocketAddr>) -> Self {
        let name = match addr {
            Some(addr) => format!("peer:{addr}"),
            None => "peer:unknown".into(),
        };
        Caller {
            name,
            data_systems: None,
            authenticated: false,
        }
    }

    pub fn of<T>(request: &Request<T>) -> Self {
        match request.extensions().get::<Caller>() {
            Some(caller) => caller.clone(),
            None => Caller::peer(request.remote_addr()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Whose request ids these are: a stored response is served only to
    /// the caller whose call left it. An authenticated caller's ids are its
    /// own; without authentication every caller shares one space (a peer's
    /// address changes with each connection, so a retry over a new one
    /// would not find its key, and an unauthenticated server trusts every
    /// caller alike anyway).
    pub fn request_id_scope(&self) -> &str {
        if self.authenticated { &self.name } else { "" }
    }

    pub fn data_systems(&self) -> Option<&Arc<[String]>> {
        self.data_systems.as_ref()
    }

    /// PERMISSION_DENIED unless this caller may act for data system `system`.
    pub fn check_system(&self, system: &str, resource: &str) -> Result<()> {
        check_system(&self.name, self.data_systems.as_ref(), system, resource)
    }
}

/// PERMISSION_DENIED unless a caller limited to `scope` may act for the
/// data system `system` (a bare id, e.g. "crm").
pub fn check_system(
    caller: &str,
    scope: Option<&Arc<[String]>>,
    system: &str,
    resource: &str,
) -> Result<()> {
    match scope {
        Some(systems) if !systems.iter().any(|s| s == system) => Err(Error::PermissionDenied {
            caller: caller.to_owned(),
            resource: resource.to_owned(),
        }),
        _ => Ok(()),
    }
}
