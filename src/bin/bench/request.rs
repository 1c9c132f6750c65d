//! `request`: CreatePrivacyRequest of an opt-out of sale, fanned out to one task.

use super::*;

impl Caller {
    pub(crate) async fn request(&mut self) -> Result<(), String> {
        let n = self.rng.below(self.plan.subjects);
        let response = self
            .requests
            .create_privacy_request(self.plan.opt_out_request(n))
            .await
            .map_err(code_label)?;
        match response.into_inner().tasks {
            Some(t) if t.total == 1 => Ok(()),
            _ => Err("NotFannedOut".to_string()),
        }
    }
}
