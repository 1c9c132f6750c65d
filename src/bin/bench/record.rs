//! `record`: RecordConsent of the seeded decision again.

use super::*;

impl Caller {
    pub(crate) async fn record(&mut self) -> Result<(), String> {
        let n = self.rng.below(self.plan.subjects);
        let request = self.plan.record_request(n);
        self.consent
            .record_consent(request)
            .await
            .map_err(code_label)?;
        Ok(())
    }
}
