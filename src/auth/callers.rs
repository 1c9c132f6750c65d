//! The callers file: every caller, how it proves who it is, and what it may
//! call. One file, so a reviewer sees the whole policy at once.
//!
//! ```toml
//! [[caller]]
//! name = "mailer"
//! token_sha256 = ["<hex SHA-256 of the token>"]
//! allow = ["privacy.v1.ConsentService/CheckConsent"]
//!
//! [[caller]]
//! name = "crm-worker"
//! certificate_names = ["crm-worker.internal"]  # none: no certificate names it
//! allow = ["privacy.v1.DataSystemService/ClaimTasks", "privacy.v1.DataSystemService/CompleteTask"]
//! data_systems = ["crm"]                         # only these systems' tasks
//! ```
//!
//! A caller is named by a certificate only through its `certificate_names`:
//! without them it accepts no certificate, so a CA-signed certificate whose
//! common name happens to equal a token caller's name gets nothing.
//!
//! `allow` entries are `package.Service/Method`, `package.Service/*` or
//! `*`, checked against the service's own contract when the file is loaded,
//! so a typo stops the server instead of silently denying.
//!
//! A caller with `data_systems` acts only for those systems: it may call
//! only the methods in `SCOPED_METHODS`, which either check the system they
//! name against its list or name and reveal no data system at all. A
//! wildcard leaves the other methods out; naming one of them stops the
//! load.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    caller: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    certificate_names: Option<Vec<String>>,
    #[serde(default)]
    token_sha256: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    data_systems: Option<Vec<String>>,
}

/// The methods a caller limited to some data systems may call: those that
/// check the system they name (or filter their list) against its scope, and
/// those that name and reveal no data system. Everything else shows or
/// changes the organisation's data as a whole (every system's tasks in a
/// privacy request, the disclosure log, legal holds, the record of
/// processing, the audit trail), which no single system's worker needs. A
/// method added to the contract stays out until it is placed here.
pub const SCOPED_METHODS: &[&str] = &[
    // Checked against the scope: the system named, or the task's system.
    "/privacy.v1.DataSystemService/RegisterDataSystem",
    "/privacy.v1.DataSystemService/GetDataSystem",
    "/privacy.v1.DataSystemService/ClaimTasks",
    "/privacy.v1.DataSystemService/RenewTaskLease",
    "/privacy.v1.DataSystemService/CompleteTask",
    "/privacy.v1.DataSystemService/FailTask",
    "/privacy.v1.DataSystemService/GetTask",
    "/privacy.v1.DataSystemService/ListTasks",
    "/privacy.v1.RetentionService/RecordLifecycleEvent",
    // Filtered to the scope.
    "/privacy.v1.DataSystemService/ListDataSystems",
    // Naming and revealing no data system.
    "/privacy.v1.ConsentService/CheckConsent",
    "/privacy.v1.ConsentService/BatchCheckConsent",
    "/privacy.v1.ConsentService/RecordConsent",
    "/privacy.v1.ConsentService/GetConsentState",
    "/privacy.v1.ConsentService/ListConsentRecords",
    "/privacy.v1.ConsentService/GetPurpose",
    "/privacy.v1.ConsentService/ListPurposes",
    "/privacy.v1.ConsentService/ListPolicyVersions",
    "/privacy.v1.PrivacyRequestService/GetJurisdictionRules",
    "/privacy.v1.PrivacyRequestService/ListJurisdictionRules",
    "/privacy.v1.PrivacyRequestService/CheckSuppression",
    "/privacy.v1.RetentionService/ListDataCategories",
    "/privacy.v1.RetentionService/GetRetentionPolicy",
    "/privacy.v1.RetentionService/ListRetentionPolicies",
    "/privacy.v1.AuditService/VerifyAuditLog",
];

/// A configured caller, with its permissions expanded to method paths.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    /// `/package.Service/Method` paths it may call.
    allowed: HashSet<String>,
    pub data_systems: Option<Arc<[String]>>,
}

impl Principal {
    pub fn may_call(&self, path: &str) -> bool {
        self.allowed.contains(path)
    }
}

/// Every configured caller, indexed by token hash and certificate name.
#[derive(Debug, Default)]
pub struct Callers {
    by_token: HashMap<[u8; 32], Arc<Principal>>,
    by_certificate_name: HashMap<String, Arc<Principal>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallersError {
    #[error("cannot read the callers file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid callers file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Callers {
    pub fn load(path: &Path) -> Result<Self, CallersError> {
        let text = std::fs::read_to_string(path).map_err(|source| CallersError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| CallersError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let methods = contract_methods();
        let mut callers = Callers::default();
        let mut names = HashSet::new();
        for entry in file.caller {
            let name = entry.name.trim().to_owned();
            if name.is_empty() || name.len() > 200 {
                return Err("every caller needs a name of 1 to 200 characters".into());
            }
            if !names.insert(name.clone()) {
                return Err(format!("caller {name:?} is listed twice"));
            }
            let scoped = entry.data_systems.is_some();
            let mut allowed = HashSet::new();
            for pattern in &entry.allow {
                let mut matched = expand(pattern, &methods);
                if matched.is_empty() {
                    return Err(format!(
                        "caller {name:?}: {pattern:?} names no method of this service \
                         (use package.Service/Method, package.Service/* or *)"
                    ));
                }
                if scoped {
                    let wildcard = pattern.trim().ends_with('*');
                    if !wildcard && !SCOPED_METHODS.contains(&matched[0].as_str()) {
                        return Err(format!(
                            "caller {name:?}: {pattern:?} concerns every data system, but the \
                             caller is limited to data_systems; give it to a caller without them"
                        ));
                    }
                    matched.retain(|m| SCOPED_METHODS.contains(&m.as_str()));
                }
                allowed.extend(matched);
            }
            let data_systems = entry
                .data_systems
                .map(|ids| ids.into_iter().map(|s| s.trim().to_owned()).collect());
            let principal = Arc::new(Principal {
                name: name.clone(),
                allowed,
                data_systems,
            });
            for hash in &entry.token_sha256 {
                let bytes = hex::decode(hash.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        format!("caller {name:?}: token_sha256 entries are 64 hex digits")
                    })?;
                if callers.by_token.insert(bytes, principal.clone()).is_some() {
                    return Err(format!(
                        "caller {name:?}: a token hash is listed for two callers"
                    ));
                }
            }
            // Explicit only: the caller's name is not a certificate name.
            for cert_name in entry.certificate_names.unwrap_or_default() {
                if callers
                    .by_certificate_name
                    .insert(cert_name.clone(), principal.clone())
                    .is_some()
                {
                    return Err(format!(
                        "caller {name:?}: certificate name {cert_name:?} is listed for two callers"
                    ));
                }
            }
        }
        Ok(callers)
    }

    /// The caller whose token hashes to `hash`.
    pub fn by_token_hash(&self, hash: &[u8; 32]) -> Option<&Arc<Principal>> {
        self.by_token.get(hash)
    }

    /// The caller named by one of a certificate's names.
    pub fn by_certificate<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<&Arc<Principal>> {
        names
            .into_iter()
            .find_map(|n| self.by_certificate_name.get(n))
    }
}

/// Whether `name` ("pkg.Service/Method", without the leading slash) is a
/// method of this service's own contract.
pub fn is_contract_method(name: &str) -> bool {
    // Without the leading '/', so that a lookup (on every call's span)
    // allocates nothing.
    static NAMES: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        contract_methods()
            .into_iter()
            .map(|path| path.trim_start_matches('/').to_owned())
            .collect()
    });
    names.contains(name)
}

/// The method paths of this service's own contract (`/pkg.Service/Method`).
fn contract_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let mut methods = BTreeSet::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                methods.insert(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    methods
}

fn expand(pattern: &str, methods: &BTreeSet<String>) -> Vec<String> {
    let pattern = pattern.trim();
    if pattern == "*" {
        return methods.iter().cloned().collect();
    }
    if let Some(service) = pattern.strip_suffix("/*") {
        let prefix = format!("/{service}/");
        return methods
            .iter()
            .filter(|m| m.starts_with(&prefix))
            .cloned()
            .collect();
    }
    let path = format!("/{pattern}");
    if methods.contains(&path) {
        vec![path]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn patterns_expand_against_the_contract() {
        let callers = Callers::parse(&format!(
            r#"
            [[caller]]
            name = "mailer"
            token_sha256 = ["{HASH}"]
            allow = ["privacy.v1.ConsentService/CheckConsent", "privacy.v1.AuditService/*"]
            "#
        ))
        .unwrap();
        let hash: [u8; 32] = hex::decode(HASH).unwrap().try_into().unwrap();
        let mailer = callers.by_token_hash(&hash).unwrap();
        assert!(mailer.may_call("/privacy.v1.ConsentService/CheckConsent"));
        assert!(mailer.may_call("/privacy.v1.AuditService/VerifyAuditLog"));
        assert!(!mailer.may_call("/privacy.v1.ConsentService/RecordConsent"));
        assert!(callers.by_certificate(["other"]).is_none());
    }

    #[test]
    fn a_caller_without_certificate_names_accepts_no_certificate() {
        let callers = Callers::parse(&format!(
            r#"
            [[caller]]
            name = "mailer"
            token_sha256 = ["{HASH}"]
            allow = ["*"]
            [[caller]]
            name = "console"
            certificate_names = ["console.internal"]
            allow = ["*"]
            "#
        ))
        .unwrap();
        assert!(callers.by_certificate(["mailer"]).is_none());
        assert!(callers.by_certificate(["console"]).is_none());
        let console = callers.by_certificate(["console.internal"]).unwrap();
        assert_eq!(console.name, "console");
    }

    #[test]
    fn scoped_methods_are_methods_of_the_contract() {
        let methods = contract_methods();
        for method in SCOPED_METHODS {
            assert!(methods.contains(*method), "{method}");
        }
    }

    #[test]
    fn a_caller_limited_to_data_systems_gets_no_org_wide_method() {
        let callers = Callers::parse(&format!(
            r#"
            [[caller]]
            name = "w"
            token_sha256 = ["{HASH}"]
            allow = ["*"]
            data_systems = ["crm"]
            "#
        ))
        .unwrap();
        let hash: [u8; 32] = hex::decode(HASH).unwrap().try_into().unwrap();
        let w = callers.by_token_hash(&hash).unwrap();
        assert!(w.may_call("/privacy.v1.DataSystemService/ClaimTasks"));
        assert!(w.may_call("/privacy.v1.ConsentService/CheckConsent"));
        assert!(!w.may_call("/privacy.v1.DataSystemService/GetDisclosureReport"));
        assert!(!w.may_call("/privacy.v1.PrivacyRequestService/GetPrivacyRequest"));
        let err = Callers::parse(
            r#"[[caller]]
            name = "w"
            allow = ["privacy.v1.RetentionService/GetRecordOfProcessing"]
            data_systems = ["crm"]"#,
        )
        .unwrap_err();
        assert!(err.contains("limited to data_systems"), "{err}");
    }

    #[test]
    fn the_example_file_loads() {
        let callers = Callers::parse(include_str!("../../docs/callers.example.toml"))
            .expect("docs/callers.example.toml is valid");
        let hash: [u8; 32] =
            hex::decode("0000000000000000000000000000000000000000000000000000000000000003")
                .unwrap()
                .try_into()
                .unwrap();
        let worker = callers.by_token_hash(&hash).expect("billing-worker");
        assert_eq!(worker.name, "billing-worker");
        assert!(!worker.may_call("/privacy.v1.PrivacyRequestService/DenyPrivacyRequest"));
        let console = callers
            .by_certificate(["privacy-console.privacy.svc"])
            .expect("console");
        assert!(console.may_call("/privacy.v1.PrivacyRequestService/DenyPrivacyRequest"));
    }

    #[test]
    fn mistakes_stop_the_load() {
        for (bad, why) in [
            (
                r#"[[caller]]
                name = "a"
                allow = ["privacy.v1.ConsentService/CheckConsnt"]"#,
                "names no method",
            ),
            (
                r#"[[caller]]
                name = "a"
                token_sha256 = ["abc"]"#,
                "64 hex digits",
            ),
            (
                r#"[[caller]]
                name = "a"
                [[caller]]
                name = "a""#,
                "listed twice",
            ),
            (
                r#"[[caller]]
                name = "a"
                certificate_names = ["x"]
                [[caller]]
                name = "b"
                certificate_names = ["x"]"#,
                "two callers",
            ),
            (
                r#"[[caller]]
                name = "a"
                allowed = ["*"]"#,
                "unknown field",
            ),
        ] {
            let err = Callers::parse(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
