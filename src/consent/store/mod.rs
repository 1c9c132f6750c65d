//! The consent domain's SQL, by resource. Writers take the transaction's
//! connection; readers take the pool. No gRPC types here.
//!
//! The functions are re-exported here, so `store::get_purpose` and the
//! like read the same from every domain.
pub mod decisions;
pub mod ledger;
pub mod policy_versions;
pub mod purposes;
pub mod subjects;

pub use decisions::{DecisionRow, Snapshot, SubjectState, decision_inputs, subject_states};
pub use ledger::{
    Appended, Pending, Writer, append, append_many, list_records, record_consent,
    record_consent_sql, records_by_id,
};
pub use policy_versions::{
    get_policy_version, grants_predating, latest_material_version, list_policy_versions,
    material_versions, publish_policy_version,
};
pub use purposes::{
    all_purpose_keys, all_purposes, create_purpose, get_purpose, lift_promise, list_purposes,
    make_promise, update_purpose,
};
pub use subjects::{get_subject, is_erased, is_minor, set_minor};

use crate::error::Error;

const PURPOSE_COLUMNS: &str = "key, display_name, description, consent_model, jurisdiction_models, \
     required_evidence, honors_gpc, reconsent_on_material_change, create_time, update_time, revision, \
     promises, excluded_categories";

const RECORD_COLUMNS: &str = "id, subject_id, purpose_key, decision, source, policy_version, jurisdiction, \
     evidence_kind, evidence_reference, evidence_description, effective_time, expire_time, \
     record_time, request_id, actor, evidence_sealed";

fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(format!("unexpected {what} in the database: {value:?}"))
}

/// One of two SQL conditions, chosen by whether a filter is present: the
/// connections use generic plans (see `db::pool`), and `$1 IS NULL OR
/// col = $1` would plan as a scan.
fn filter(present: bool, when_present: &'static str, when_absent: &'static str) -> &'static str {
    if present { when_present } else { when_absent }
}
