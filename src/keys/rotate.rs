//! Crypto-shredding (a subject's data key destroyed) and rotation (data
//! keys re-wrapped under the active master key), in the database.
use sqlx::{PgConnection, PgPool};

use super::Keyring;
use crate::error::Result;

/// Destroys the subject's data key (crypto-shredding), in the caller's
/// transaction. Returns whether there was one.
pub async fn shred(conn: &mut PgConnection, subject: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM subject_keys WHERE subject_id = $1")
        .bind(subject)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Re-wraps every data key not under the active master key, `batch` keys
/// per transaction. Safe to rerun and to run beside the server: each batch
/// locks its rows (SKIP LOCKED) and commits on its own. Returns the number
/// of keys re-wrapped.
pub async fn rotate(pool: &PgPool, keyring: &Keyring, batch: i64) -> Result<u64> {
    let active = keyring.active_id()?.to_owned();
    let mut total = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, subject_id, master_key_id, wrapped_key FROM subject_keys
             WHERE master_key_id <> $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(&active)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut wrapped = Vec::with_capacity(rows.len());
        for (id, subject, master_id, old) in &rows {
            let key = keyring.unwrap(subject, master_id, old)?;
            ids.push(*id);
            wrapped.push(keyring.wrap(subject, &key)?.1);
        }
        sqlx::query(
            "UPDATE subject_keys k SET master_key_id = $1, wrapped_key = t.w, wrap_time = now()
             FROM unnest($2::bigint[], $3::bytea[]) AS t (id, w) WHERE k.id = t.id",
        )
        .bind(&active)
        .bind(&ids)
        .bind(&wrapped)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        total += rows.len() as u64;
        tracing::info!(rewrapped = total, "data keys re-wrapped");
    }
}
