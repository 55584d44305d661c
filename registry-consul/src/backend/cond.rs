//! Conditional writes: one `/v1/txn` whose first operation checks the condition (`check-not-exists`,
//! `check-index` or `check-session`, all in Consul 1.8) and whose others are the very operations
//! [`put`](Backend::put) and [`delete`](Backend::delete) use. Consul runs a transaction's
//! operations in order and applies all of them or none, so the check and the write are one atomic
//! step on the server.

use super::*;

/// A transaction answer with each error's operation index, to tell a failed check (operation 0)
/// from a failed write.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IndexedAnswer {
    results: Option<Vec<TxnResult>>,
    errors: Option<Vec<IndexedError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IndexedError {
    #[serde(default)]
    op_index: usize,
    what: String,
}

/// The failures of a transaction that Consul refused: (operation index, what).
type Refusals = Vec<(usize, String)>;

impl ConsulBackend {
    /// Runs a transaction; `Err` inside when Consul rolled it back, with each error's operation.
    pub(super) async fn txn_indexed(
        &self,
        ops: Vec<serde_json::Value>,
    ) -> Result<std::result::Result<Vec<TxnResult>, Refusals>> {
        let body = serde_json::to_vec(&ops).map_err(|e| Error::invalid(e.to_string()))?;
        let a = self.call(Method::PUT, "/v1/txn", "", Some(body)).await?;
        match a.status {
            StatusCode::OK | StatusCode::CONFLICT => {
                let t: IndexedAnswer = serde_json::from_slice(&a.body).map_err(|e| {
                    Error::new(
                        ErrorKind::Internal,
                        format!("consul txn: unreadable answer {}", a.text()),
                    )
                    .with_source(e)
                })?;
                match t.errors {
                    Some(errs) if !errs.is_empty() => Ok(Err(errs
                        .into_iter()
                        .map(|e| (e.op_index, e.what))
                        .collect())),
                    _ => Ok(Ok(t.results.unwrap_or_default())),
                }
            }
            StatusCode::PAYLOAD_TOO_LARGE => Err(Error::invalid(format!(
                "consul txn: request too large ({})",
                a.text()
            ))),
            s => Err(Error::new(
                if s == StatusCode::BAD_REQUEST {
                    ErrorKind::InvalidInput
                } else {
                    ErrorKind::Internal
                },
                format!("consul txn: {s} {}", a.text()),
            )),
        }
    }

    /// Runs `check` then `writes` in one transaction. `Ok(Ok(results))` when applied,
    /// `Ok(Err(current))` when the check failed (the key read just after: a failed transaction
    /// returns nothing), `Err` for any other refusal, `LeaseNotFound` when `session` has ended.
    async fn txn_checked(
        &self,
        what: &str,
        k: &str,
        session: Option<&str>,
        check: serde_json::Value,
        writes: Vec<serde_json::Value>,
    ) -> Result<std::result::Result<Vec<TxnResult>, Option<KeyValue>>> {
        let mut ops = vec![check];
        ops.extend(writes);
        let errs = match self.txn_indexed(ops).await? {
            Ok(results) => return Ok(Ok(results)),
            Err(errs) => errs,
        };
        let whats: Vec<String> = errs.iter().map(|(_, w)| w.clone()).collect();
        let all = whats.join("; ").to_ascii_lowercase();
        if all.contains("permission denied") {
            return Err(txn_failure(&format!("{what} {k}"), &whats));
        }
        // Every operation is tried and every failure reported: a failed check is the answer,
        // whatever else failed with it (a lock held by the session the check did not find, or
        // our own ended session: the condition comes first).
        if errs.iter().any(|(i, _)| *i == 0) {
            return Ok(Err(self.get(k).await?));
        }
        if let Some(s) = session
            && all.contains("session")
            && !self.session_exists(s).await?
        {
            return Err(Error::lease_not_found(format!(
                "consul {what} {k}: {}",
                whats.join("; ")
            )));
        }
        Err(txn_failure(&format!("{what} {k}"), &whats))
    }

    pub(super) async fn put_if_txn(
        &self,
        k: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        key::validate_put(k, &value, &self.inner.caps)?;
        let session = lease.map(session_id).transpose()?;
        let ck = self.enc(k);
        let v = B64.encode(&value);
        // The check, and the session holding the key's lock whenever the check passes: it must
        // unlock the key before another session locks it (or a plain set detaches it), as in put.
        let (check, holder) = match &cond {
            Condition::Absent => (json!({"KV": {"Verb": "check-not-exists", "Key": ck}}), None),
            Condition::Lease(l) => {
                let Ok(l) = session_id(l) else {
                    // Not a session id: no key is held by it.
                    return Ok(CondOutcome::Failed(self.get(k).await?));
                };
                (
                    json!({"KV": {"Verb": "check-session", "Key": ck, "Session": l}}),
                    Some(l.to_owned()),
                )
            }
            Condition::Revision(r) => {
                // The holder at revision `r` is read here; the check-index makes sure the key is
                // still at that revision (any change, a lock's included, moves its index) when
                // the transaction runs.
                match self.get(k).await? {
                    Some(kv) if kv.revision == *r => (
                        json!({"KV": {"Verb": "check-index", "Key": ck, "Index": r}}),
                        kv.lease.map(|l| l.as_str().to_owned()),
                    ),
                    other => return Ok(CondOutcome::Failed(other)),
                }
            }
            _ => return Ok(CondOutcome::Failed(self.get(k).await?)),
        };
        let mut writes = Vec::new();
        if let Some(h) = holder.as_deref().filter(|h| Some(*h) != session) {
            writes.push(json!({"KV": {"Verb": "unlock", "Key": ck, "Value": v, "Session": h}}));
        }
        writes.push(match session {
            Some(s) => json!({"KV": {"Verb": "lock", "Key": ck, "Value": v, "Session": s}}),
            None => json!({"KV": {"Verb": "set", "Key": ck, "Value": v}}),
        });
        match self
            .txn_checked("conditional put", k, session, check, writes)
            .await?
        {
            Ok(results) => results
                .iter()
                .rev()
                .find_map(|r| r.kv.as_ref().map(|kv| kv.modify_index))
                .map(CondOutcome::Applied)
                .ok_or_else(|| {
                    Error::new(ErrorKind::Internal, "consul txn: no index in the answer")
                }),
            Err(current) => Ok(CondOutcome::Failed(current)),
        }
    }

    pub(super) async fn delete_if_txn(&self, k: &str, cond: Condition) -> Result<CondOutcome> {
        key::validate_key(k, &self.inner.caps)?;
        let ck = self.enc(k);
        let check = match &cond {
            Condition::Absent => json!({"KV": {"Verb": "check-not-exists", "Key": ck}}),
            Condition::Lease(l) => match session_id(l) {
                Ok(l) => json!({"KV": {"Verb": "check-session", "Key": ck, "Session": l}}),
                Err(_) => return Ok(CondOutcome::Failed(self.get(k).await?)),
            },
            Condition::Revision(r) => {
                json!({"KV": {"Verb": "check-index", "Key": ck, "Index": r}})
            }
            _ => return Ok(CondOutcome::Failed(self.get(k).await?)),
        };
        // A delete removes the key locked or not, as delete does (and deletes nothing, at no
        // index, when the check was that there is nothing).
        let writes = vec![json!({"KV": {"Verb": "delete", "Key": ck}})];
        match self
            .txn_checked("conditional delete", k, None, check, writes)
            .await?
        {
            Ok(_) => {
                // As in delete: Consul does not say at which index the delete happened; the key's
                // own prefix index covers its tombstone.
                let a = self
                    .call(Method::GET, &format!("/v1/kv/{ck}"), "keys=true", None)
                    .await?;
                Ok(CondOutcome::Applied(a.index.unwrap_or(0)))
            }
            Err(current) => Ok(CondOutcome::Failed(current)),
        }
    }
}
