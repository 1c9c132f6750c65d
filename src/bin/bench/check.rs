//! `check` and `check-verdict`: one CheckConsent of the seeded purpose.

use super::*;

impl Caller {
    /// A CheckConsent of a seeded subject; `read_mask` names the response
    /// fields asked for (None: the whole answer).
    pub(crate) async fn check(&mut self, read_mask: Option<&[&str]>) -> Result<(), String> {
        let n = self.rng.below(self.plan.subjects);
        let request = CheckConsentRequest {
            subject_id: self.plan.subject(n),
            purpose: SEEDED_PURPOSE.to_string(),
            read_mask: read_mask.map(|paths| prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        };
        let response = self
            .consent
            .check_consent(request)
            .await
            .map_err(code_label)?;
        verify_verdict(response.into_inner().verdict(), expected_seeded_verdict(n))
    }
}
