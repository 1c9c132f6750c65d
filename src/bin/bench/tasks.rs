//! `tasks`: a data-system worker's claim-and-complete cycle, and the queue it drains.

use super::*;

/// Tasks a `tasks` call claims at most.
pub(crate) const CLAIM_BATCH: i32 = 10;

impl Caller {
    /// Claims up to `CLAIM_BATCH` tasks and completes each with proof.
    pub(crate) async fn claim_and_complete(&mut self) -> Result<u64, String> {
        let claimed = self
            .systems
            .claim_tasks(ClaimTasksRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                data_system: format!("dataSystems/{}", self.plan.system),
                worker: "bench".to_string(),
                max_tasks: CLAIM_BATCH,
                lease_seconds: 60,
            })
            .await
            .map_err(code_label)?
            .into_inner()
            .tasks;
        if claimed.is_empty() {
            return Err("QueueEmpty".to_string());
        }
        for task in &claimed {
            self.systems
                .complete_task(CompleteTaskRequest {
                    name: task.name.clone(),
                    request_id: uuid::Uuid::new_v4().to_string(),
                    lease_id: task.lease_id.clone(),
                    result: Some(TaskResult {
                        records_affected: 1,
                        system_reference: "bench".to_string(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(code_label)?;
        }
        Ok(claimed.len() as u64)
    }
}

/// Registers the bench's data system and queues `count` tasks for it through
/// opt-out requests, `concurrency` at a time.
pub(crate) async fn seed_tasks(
    channels: &[Channel],
    plan: Arc<Plan>,
    concurrency: usize,
    count: usize,
) -> Result<(), String> {
    DataSystemServiceClient::new(channels[0].clone())
        .register_data_system(RegisterDataSystemRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            data_system: Some(DataSystem {
                id: plan.system.clone(),
                display_name: "Benchmark worker".to_string(),
                kind: data_system::Kind::Internal as i32,
                categories: vec![plan.category.clone()],
                country: "US".to_string(),
                actions: vec![DataAction::Suppress as i32],
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| format!("RegisterDataSystem failed: {s}"))?;
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency.min(count).max(1))
        .map(|i| {
            let mut client = PrivacyRequestServiceClient::new(channels[i % channels.len()].clone());
            let (plan, next) = (plan.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return Ok::<(), String>(());
                    }
                    let request = plan.opt_out_request(n % plan.subjects);
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match client.create_privacy_request(request.clone()).await {
                            Ok(_) => break,
                            Err(s) if attempt < 5 && is_transient(s.code()) => {
                                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                            }
                            Err(s) => return Err(format!("queueing a task failed: {s}")),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| format!("queueing task panicked: {e}"))??;
    }
    Ok(())
}
