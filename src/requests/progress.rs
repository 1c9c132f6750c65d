//! How a request moves when its data-system tasks settle.
use serde_json::json;
use sqlx::PgConnection;

use super::{service, store};
use crate::error::Result;
use crate::journal::{self, ChangeEntry, ChangeKind};
use crate::rpc::Context;

/// Called in the transaction that moved one of the request's tasks to a
/// settled state (SUCCEEDED, EXEMPTED, FAILED): completes the request when
/// every task is done (in part when some were exempt). A failed task keeps
/// the request open and shows in its task summary, for an operator.
#[tracing::instrument(skip_all, fields(privacy_request = privacy_request_id))]
pub async fn task_settled(
    conn: &mut PgConnection,
    ctx: &Context,
    privacy_request_id: i64,
) -> Result<()> {
    let Some(mut row) = store::get(conn, privacy_request_id, true).await? else {
        return Ok(());
    };
    if service::complete_if_done(conn, ctx, &mut row).await? {
        let name = row.name();
        let subject = row.subject_id.as_str();
        journal::record(
            conn,
            ctx.audit(&name, Some(subject), json!({ "state": row.state.as_str() })),
            ChangeEntry::resource(ChangeKind::PrivacyRequestChanged, &name, Some(subject)),
        )
        .await?;
    }
    Ok(())
}
