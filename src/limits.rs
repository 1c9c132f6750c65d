//! Input limits, enforced at the edge for every RPC at once.
//!
//! Every string, bytes, repeated and map field a request can carry has a
//! maximum size: the one its proto comment states (`At most 8000 bytes.`,
//! `At most 100 items.`), else a default by kind ([`DEFAULT_MAX_BYTES`],
//! [`DEFAULT_MAX_ITEMS`]). `build.rs` reads the comments and generates a
//! [`Limits`] walk for every message reachable from an RPC's input, so a new
//! RPC or field is covered without code here. [`LimitsCodec`], the codec of
//! every generated service, runs the walk right after decoding: a request
//! over a limit never reaches a handler, and gets INVALID_ARGUMENT with
//! FIELD_VIOLATION and one BadRequest field violation per field
//! (`checks[3].subject_id: must be at most 1024 bytes`). A request that is not
//! valid protobuf gets INVALID_ARGUMENT with MALFORMED_MESSAGE (tonic's own
//! codec says INTERNAL).
//!
//! The limits are hard caps in bytes, never tighter than a field's own rule
//! (a 2000-character text gets 8000 bytes, the most 2000 characters take in
//! UTF-8), so within them the handler still reports every invalid field at
//! once with its precise rule.
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::error::{Error, FieldViolation};

/// The limit of a string or bytes field whose comment states none.
pub const DEFAULT_MAX_BYTES: usize = 1024;
/// The limit of a repeated or map field whose comment states none.
pub const DEFAULT_MAX_ITEMS: usize = 1000;
/// At most this many violations are collected for one request (no more fit
/// in a status).
pub const MAX_REPORTED: usize = crate::error::MAX_FIELD_VIOLATIONS;

/// Where a field is in a request, built on the stack while walking and
/// rendered (`checks[3].subject_id`) only when a limit is exceeded.
#[derive(Debug, Clone, Copy)]
pub enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl<'a> Path<'a> {
    pub fn field(&'a self, name: &'static str) -> Path<'a> {
        Path::Field(self, name)
    }

    pub fn index(&'a self, i: usize) -> Path<'a> {
        Path::Index(self, i)
    }

    pub fn key(&'a self, key: &'a str) -> Path<'a> {
        Path::Key(self, key)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Path::Root => {}
            Path::Field(parent, name) => {
                parent.write(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Path::Index(parent, i) => {
                parent.write(out);
                out.push_str(&format!("[{i}]"));
            }
            Path::Key(parent, key) => {
                parent.write(out);
                let shown: String = key.chars().take(64).collect();
                out.push_str(&format!("[{shown:?}]"));
            }
        }
    }
}

/// The violations found in one request (none allocated while there are none).
#[derive(Debug, Default)]
pub struct Found(Vec<FieldViolation>);

impl Found {
    fn add(&mut self, at: &Path<'_>, description: String) {
        if self.0.len() < MAX_REPORTED {
            self.0.push(FieldViolation::new(at.render(), description));
        }
    }

    /// A string field's size in bytes.
    pub fn text(&mut self, value: &str, at: &Path<'_>, name: &'static str, max: usize) {
        self.bytes(value.as_bytes(), at, name, max);
    }

    /// A bytes field's size.
    pub fn bytes(&mut self, value: &[u8], at: &Path<'_>, name: &'static str, max: usize) {
        if value.len() > max {
            self.add(&at.field(name), format!("must be at most {max} bytes"));
        }
    }

    /// A value's size, at a path built by the caller (a map's values).
    pub fn bytes_at(&mut self, value: &[u8], at: &Path<'_>, max: usize) {
        if value.len() > max {
            self.add(at, format!("must be at most {max} bytes"));
        }
    }

    /// A repeated or map field's item count; true when within the limit (the
    /// items are then worth checking one by one).
    pub fn count(&mut self, len: usize, at: &Path<'_>, name: &'static str, max: usize) -> bool {
        if len > max {
            self.add(&at.field(name), format!("must have at most {max} items"));
            false
        } else {
            true
        }
    }

    /// A repeated string or bytes field: the count, then each item's size.
    pub fn items<T: AsRef<[u8]>>(
        &mut self,
        values: &[T],
        at: &Path<'_>,
        name: &'static str,
        max_items: usize,
        max_bytes: usize,
    ) {
        if self.count(values.len(), at, name, max_items) {
            let field = at.field(name);
            for (i, v) in values.iter().enumerate() {
                self.bytes_at(v.as_ref(), &field.index(i), max_bytes);
            }
        }
    }

    /// A map's string key.
    pub fn key(&mut self, key: &str, at: &Path<'_>, name: &'static str, max: usize) {
        if key.len() > max {
            let field = at.field(name);
            self.add(&field.key(key), format!("key must be at most {max} bytes"));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }
}

/// A message whose string, bytes, repeated and map fields have limits
/// (generated by `build.rs` from the protos).
pub trait Limits {
    fn check_limits(&self, at: &Path<'_>, found: &mut Found);

    /// Every limit this message exceeds, as field violations.
    fn limit_violations(&self) -> Vec<FieldViolation> {
        let mut found = Found::default();
        self.check_limits(&Path::Root, &mut found);
        found.into_vec()
    }
}

/// What the codec does with a message it decoded. Generated for every RPC
/// input and output type: inputs are checked against their [`Limits`];
/// outputs (what a generated client decodes) are not, so clients never
/// refuse a response over a request's limits.
pub trait DecodeCheck: Message + Default {
    /// True for an RPC's input type.
    const IS_REQUEST: bool;

    /// The violations of a decoded request; none for outputs.
    fn request_violations(&self) -> Vec<FieldViolation> {
        Vec::new()
    }
}

/// The status of a request that is not valid protobuf for its type.
pub fn malformed(type_name: &str, err: &prost::DecodeError) -> Status {
    crate::error::malformed_status(format!(
        "the request is not a valid {type_name} message: {err}"
    ))
}

/// The codec of every generated `privacy.v1` service and client: prost's
/// encoding, plus the limits on decoded requests (see the module docs).
#[derive(Debug, Clone)]
pub struct LimitsCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LimitsCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LimitsCodec<T, U>
where
    T: Message + Send + 'static,
    U: DecodeCheck + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LimitsDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LimitsDecoder(PhantomData)
    }
}

/// Decodes with prost, then applies [`DecodeCheck`].
#[derive(Debug, Clone)]
pub struct LimitsDecoder<U>(PhantomData<U>);

impl<U: DecodeCheck> Decoder for LimitsDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let item = match U::decode(buf) {
            Ok(item) => item,
            Err(err) if U::IS_REQUEST => return Err(malformed(short_type_name::<U>(), &err)),
            // A client decoding a response: tonic's own mapping.
            Err(err) => return Err(Status::internal(err.to_string())),
        };
        if U::IS_REQUEST {
            let violations = item.request_violations();
            if !violations.is_empty() {
                return Err(Error::InvalidArgument(violations).into());
            }
        }
        Ok(Some(item))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

fn short_type_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn fields(v: &[FieldViolation]) -> Vec<(&str, &str)> {
        v.iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect()
    }

    #[test]
    fn a_request_within_its_limits_has_no_violations() {
        let req = proto::CheckConsentRequest {
            subject_id: "s".repeat(DEFAULT_MAX_BYTES),
            purpose: "marketing_email".into(),
            ..Default::default()
        };
        assert!(req.request_violations().is_empty());
    }

    #[test]
    fn an_oversized_string_is_named_with_its_limit() {
        let req = proto::CheckConsentRequest {
            subject_id: "s".repeat(DEFAULT_MAX_BYTES + 1),
            ..Default::default()
        };
        assert_eq!(
            fields(&req.request_violations()),
            [("subject_id", "must be at most 1024 bytes")]
        );
    }

    #[test]
    fn nested_and_listed_fields_are_named_by_their_path() {
        let req = proto::BatchCheckConsentRequest {
            checks: vec![
                proto::ConsentCheck::default(),
                proto::ConsentCheck {
                    purpose: "p".repeat(5000),
                    ..Default::default()
                },
            ],
            consistency_token: "t".repeat(2000),
            ..Default::default()
        };
        assert_eq!(
            fields(&req.request_violations()),
            [
                ("checks[1].purpose", "must be at most 1024 bytes"),
                ("consistency_token", "must be at most 1024 bytes"),
            ]
        );
        let req = proto::CreatePrivacyRequestRequest {
            identifiers: vec![proto::Identifier {
                kind: 1,
                value: "v".repeat(5000),
            }],
            ..Default::default()
        };
        assert_eq!(
            fields(&req.request_violations()),
            [("identifiers[0].value", "must be at most 1280 bytes")]
        );
    }

    #[test]
    fn a_list_over_its_limit_is_named_once() {
        let req = proto::BatchCheckConsentRequest {
            checks: vec![proto::ConsentCheck::default(); 1001],
            ..Default::default()
        };
        assert_eq!(
            fields(&req.request_violations()),
            [("checks", "must have at most 1000 items")]
        );
        let req = proto::CheckSuppressionRequest {
            identifiers: vec![proto::Identifier::default(); 101],
            ..Default::default()
        };
        assert_eq!(
            fields(&req.request_violations()),
            [("identifiers", "must have at most 100 items")]
        );
    }

    #[test]
    fn comment_limits_override_the_defaults() {
        let req = proto::CompleteTaskRequest {
            result: Some(proto::TaskResult {
                export_json: "x".repeat(DEFAULT_MAX_BYTES * 2),
                exempt_reason: "x".repeat(4001),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(&req.request_violations()),
            [("result.exempt_reason", "must be at most 4000 bytes")]
        );
    }

    #[test]
    fn responses_are_never_checked() {
        let resp = proto::AccessPackage {
            content: "x".repeat(10 * DEFAULT_MAX_BYTES),
            ..Default::default()
        };
        const { assert!(!<proto::AccessPackage as DecodeCheck>::IS_REQUEST) };
        assert!(resp.request_violations().is_empty());
    }

    #[test]
    fn violations_are_capped() {
        let req = proto::CompletePrivacyRequestRequest {
            explanation: "x".repeat(9000),
            exemptions: vec!["x".repeat(9000); 100],
            ..Default::default()
        };
        let found = req.request_violations();
        assert_eq!(found.len(), MAX_REPORTED);
        assert_eq!(found[0].field, "explanation");
        assert_eq!(found[1].field, "exemptions[0]");
    }
}
