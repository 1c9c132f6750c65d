//! A data system's worker reports on its tasks: the data-system use cases
//! record the lease, the result or the failure, and the requests whose
//! tasks settled are told here, in the same transaction (a request whose
//! every task is done completes). The handlers of ClaimTasks, CompleteTask
//! and FailTask call these, so the data-system domain needs no knowledge of
//! privacy requests.
use sqlx::PgConnection;

use super::progress::task_settled;
use crate::datasystems::model::{Claim, LeaseId, Task, TaskId, TaskResult};
use crate::datasystems::service::{self as tasks, Settled};
use crate::error::Result;
use crate::keys::Keyring;
use crate::rpc::Context;
use crate::tokens::ConsistencyToken;

/// Leases the system's next tasks (ending its expired leases first).
pub async fn claim(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    claim: &Claim,
) -> Result<(Vec<Task>, ConsistencyToken)> {
    let (claimed, token, settled) = tasks::claim(keys, conn, ctx, claim).await?;
    tell(conn, ctx, settled).await?;
    Ok((claimed, token))
}

/// Records a task's result.
pub async fn complete(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    result: &TaskResult,
) -> Result<(Task, ConsistencyToken)> {
    let (task, token, settled) = tasks::complete(keys, conn, ctx, id, lease, result).await?;
    tell(conn, ctx, settled).await?;
    Ok((task, token))
}

/// Records a failed attempt.
pub async fn fail(
    keys: &Keyring,
    conn: &mut PgConnection,
    ctx: &Context,
    id: TaskId,
    lease: LeaseId,
    retryable: bool,
    error_message: &str,
) -> Result<(Task, ConsistencyToken)> {
    let (task, token, settled) =
        tasks::fail(keys, conn, ctx, id, lease, retryable, error_message).await?;
    tell(conn, ctx, settled).await?;
    Ok((task, token))
}

async fn tell(conn: &mut PgConnection, ctx: &Context, settled: Settled) -> Result<()> {
    for request in settled.0 {
        task_settled(conn, ctx, request).await?;
    }
    Ok(())
}
