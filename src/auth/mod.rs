//! Caller authentication and permissions.
//!
//! A caller proves who it is with a client certificate signed by the
//! configured CA (mutual TLS; the certificate's common name or a DNS/URI
//! subject alternative name is looked up in the callers' explicit
//! `certificate_names`) or with a
//! bearer token in the `authorization` metadata (the file keeps only each
//! token's SHA-256). It may then call only the methods its entry allows.
//! Health and reflection need no credentials. Refusals are audited, with the
//! reason but never the credential.
pub mod callers;
pub mod refusals;
pub mod tls;

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::Status;

pub use callers::{Callers, CallersError, Principal};

use crate::caller::Caller;

/// Methods anyone may call: health probes and reflection.
pub fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials, or credentials the server does not accept.
    Unauthenticated(&'static str),
    /// Authenticated as `caller`, which may not call the method.
    NotPermitted { caller: String },
}

impl Denial {
    pub fn status(&self, method: &str) -> Status {
        match self {
            Denial::Unauthenticated(why) => crate::error::unauthenticated_status(method, why),
            Denial::NotPermitted { caller } => {
                crate::error::permission_denied_status(caller, "method", method)
            }
        }
    }
}

/// Decides, per call, who the caller is and whether it may call the method.
#[derive(Debug)]
pub struct Authenticator {
    callers: Callers,
}

impl Authenticator {
    pub fn new(callers: Callers) -> Self {
        Self { callers }
    }

    /// The caller of a call to `path` with these headers and (under TLS)
    /// these client certificate names.
    pub fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        certificate_names: &[String],
    ) -> Result<Caller, Denial> {
        let by_token =
            match headers.get(http::header::AUTHORIZATION) {
                None => None,
                Some(value) => {
                    let token = value.to_str().ok().and_then(bearer_token).ok_or(
                        Denial::Unauthenticated(
                            "the authorization metadata is not \"Bearer <token>\"",
                        ),
                    )?;
                    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                    Some(
                        self.callers
                            .by_token_hash(&hash)
                            .ok_or(Denial::Unauthenticated("unknown bearer token"))?,
                    )
                }
            };
        let by_certificate = self
            .callers
            .by_certificate(certificate_names.iter().map(String::as_str));
        let principal = match (by_token, by_certificate) {
            (Some(t), Some(c)) if !Arc::ptr_eq(t, c) => {
                return Err(Denial::Unauthenticated(
                    "the client certificate and the bearer token name different callers",
                ));
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                return Err(match certificate_names.first() {
                    // A certificate from the trusted CA naming no caller: it
                    // is someone, with no permissions here.
                    Some(name) => Denial::NotPermitted {
                        caller: format!("certificate:{name}"),
                    },
                    None => Denial::Unauthenticated("no credentials"),
                });
            }
        };
        if !principal.may_call(path) {
            return Err(Denial::NotPermitted {
                caller: principal.name.clone(),
            });
        }
        Ok(Caller::authenticated(
            &principal.name,
            principal.data_systems.clone(),
        ))
    }
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The audit event of a refused call: who (if known), which method, why,
/// from where. Never the token or the certificate.
/// Written at once, one event per refusal: for refusals of authenticated
/// callers inside a use case; refusals at the door go through
/// `refusals::RefusalAudit`, which aggregates them. The fields a caller
/// controls are bounded either way.
pub async fn audit_denial(
    pool: &PgPool,
    actor: &str,
    path: &str,
    outcome: &str,
    reason: &str,
    peer: &str,
    request_id: Option<&str>,
) {
    let details = serde_json::json!({
        "outcome": outcome,
        "reason": refusals::cut(reason, 1000),
        "peer": refusals::cut(peer, 64),
        "count": 1,
    });
    refusals::insert(
        pool,
        refusals::cut(actor, 200),
        refusals::method_name(path),
        request_id.map(|id| refusals::cut(id, refusals::MAX_REQUEST_ID)),
        details,
    )
    .await;
}

/// The audit fields of a denial: (actor, outcome, reason).
pub fn denial_fields(denial: &Denial) -> (String, &'static str, String) {
    match denial {
        Denial::Unauthenticated(why) => (
            "unauthenticated".to_owned(),
            "UNAUTHENTICATED",
            (*why).to_owned(),
        ),
        Denial::NotPermitted { caller } => (
            caller.clone(),
            "PERMISSION_DENIED",
            "method not allowed for this caller".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        // SHA-256 of "s3cret-token".
        let hash = hex::encode(Sha256::digest(b"s3cret-token"));
        let callers = Callers::parse(&format!(
            r#"
            [[caller]]
            name = "mailer"
            token_sha256 = ["{hash}"]
            allow = ["privacy.v1.ConsentService/CheckConsent"]
            [[caller]]
            name = "crm-worker"
            certificate_names = ["crm-worker"]
            allow = ["privacy.v1.DataSystemService/*"]
            data_systems = ["crm"]
            "#
        ))
        .unwrap();
        Authenticator::new(callers)
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    const CHECK: &str = "/privacy.v1.ConsentService/CheckConsent";
    const RECORD: &str = "/privacy.v1.ConsentService/RecordConsent";
    const CLAIM: &str = "/privacy.v1.DataSystemService/ClaimTasks";

    #[test]
    fn tokens_and_certificates_name_callers() {
        let a = authenticator();
        let mailer = a
            .authorize(CHECK, &headers(Some("Bearer s3cret-token")), &[])
            .unwrap();
        assert_eq!(mailer.as_str(), "mailer");
        assert_eq!(
            a.authorize(CHECK, &headers(Some("bearer s3cret-token")), &[])
                .unwrap()
                .as_str(),
            "mailer"
        );
        let worker = a
            .authorize(CLAIM, &headers(None), &["crm-worker".into()])
            .unwrap();
        assert_eq!(worker.as_str(), "crm-worker");
        assert_eq!(worker.data_systems().unwrap().as_ref(), ["crm".to_owned()]);
    }

    #[test]
    fn refusals_say_why() {
        let a = authenticator();
        assert_eq!(
            a.authorize(CHECK, &headers(None), &[]),
            Err(Denial::Unauthenticated("no credentials"))
        );
        assert_eq!(
            a.authorize(CHECK, &headers(Some("Bearer wrong")), &[]),
            Err(Denial::Unauthenticated("unknown bearer token"))
        );
        assert!(matches!(
            a.authorize(CHECK, &headers(Some("Basic abc")), &[]),
            Err(Denial::Unauthenticated(_))
        ));
        assert_eq!(
            a.authorize(RECORD, &headers(Some("Bearer s3cret-token")), &[]),
            Err(Denial::NotPermitted {
                caller: "mailer".into()
            })
        );
        assert_eq!(
            a.authorize(CHECK, &headers(None), &["stranger".into()]),
            Err(Denial::NotPermitted {
                caller: "certificate:stranger".into()
            })
        );
        assert!(matches!(
            a.authorize(
                CLAIM,
                &headers(Some("Bearer s3cret-token")),
                &["crm-worker".into()]
            ),
            Err(Denial::Unauthenticated(_))
        ));
    }
}
