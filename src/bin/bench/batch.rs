//! `batch`: BatchCheckConsent of random (subject, purpose) pairs.

use super::*;

/// Purposes of the default catalogue used by `batch`, with the verdict expected for a
/// seeded subject: `None` means "as seeded" (the subject's own analytics_cookies decision).
pub(crate) const BATCH_PURPOSES: &[(&str, Option<Verdict>)] = &[
    (SEEDED_PURPOSE, None),
    ("marketing_email", Some(Verdict::Allowed)), // OPT_OUT, nothing recorded
    ("model_training", Some(Verdict::Denied)),   // OPT_IN, nothing recorded
    ("sale_of_personal_data", Some(Verdict::Denied)), // PROHIBITED
    ("service_messages", Some(Verdict::Allowed)), // NOT_CONSENT_BASED
];

impl Caller {
    pub(crate) async fn batch(&mut self) -> Result<(), String> {
        let mut checks = Vec::with_capacity(self.plan.batch_size);
        let mut expected = Vec::with_capacity(self.plan.batch_size);
        for _ in 0..self.plan.batch_size {
            let n = self.rng.below(self.plan.subjects);
            let (purpose, verdict) = BATCH_PURPOSES[self.rng.below(BATCH_PURPOSES.len())];
            checks.push(ConsentCheck {
                subject_id: self.plan.subject(n),
                purpose: purpose.to_string(),
                ..Default::default()
            });
            expected.push(verdict.unwrap_or_else(|| expected_seeded_verdict(n)));
        }
        let request = BatchCheckConsentRequest {
            checks,
            ..Default::default()
        };
        let response = self
            .consent
            .batch_check_consent(request)
            .await
            .map_err(code_label)?;
        let results = response.into_inner().results;
        if results.len() != expected.len() {
            return Err("WrongResultCount".to_string());
        }
        results
            .iter()
            .zip(expected)
            .try_for_each(|(result, want)| verify_verdict(result.verdict(), want))
    }
}
