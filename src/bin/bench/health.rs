//! `health`: the gRPC stack alone, the baseline of every ratio.

use super::*;

impl Caller {
    pub(crate) async fn health_check(&mut self) -> Result<(), String> {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let response = self.health.check(request).await.map_err(code_label)?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            _ => Err("NotServing".to_string()),
        }
    }
}
