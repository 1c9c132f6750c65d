//! How a request moves when its data-system tasks settle.
use sqlx::PgConnection;

use crate::error::Result;
use crate::rpc::Context;

/// Called in the transaction that moved one of the request's tasks to a
/// settled state (SUCCEEDED, EXEMPTED, FAILED): completes the request when
/// every task is done (in part when some were exempt).
pub async fn task_settled(
    _conn: &mut PgConnection,
    _ctx: &Context,
    _privacy_request_id: i64,
) -> Result<()> {
    Ok(())
}
