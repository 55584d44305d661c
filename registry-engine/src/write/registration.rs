//! The handle of one registration: read its state, update its instance, deregister or drain it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use registry_core::error::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, oneshot, watch};

use crate::model::instance::{Instance, InstanceState};
use crate::write::keeper::Cmd;
use crate::write::observer::Observers;
use crate::write::state::{RegistrationState, closed};

/// A live registration. Dropping it deregisters in the background; use
/// [`deregister`](Self::deregister) or [`drain`](Self::drain) to wait for it.
pub struct Registration {
    pub(crate) key: String,
    /// This registration's identity at its keeper: commands act on a key only while this handle
    /// owns it there (a rejected duplicate of the same key owns nothing).
    pub(crate) token: u64,
    /// Set when the handle is deregistered or dropped; a delayed first write that has not been
    /// applied yet is then never applied.
    pub(crate) cancelled: Arc<AtomicBool>,
    pub(crate) instance: Mutex<Instance>,
    pub(crate) keeper: mpsc::UnboundedSender<Cmd>,
    pub(crate) state: watch::Receiver<RegistrationState>,
    /// Who follows the registry's registrations: waited for after a deregistration.
    pub(crate) observers: Observers,
    pub(crate) live: bool,
}

/// A process-wide unique registration identity.
pub(crate) fn next_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("state", &self.state.borrow().name())
            .finish()
    }
}

impl Registration {
    /// The backend key of this instance.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The instance as last written.
    pub fn instance(&self) -> Instance {
        self.instance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current state.
    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// A receiver that wakes on every state change.
    pub fn watch_state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Waits until the registration is (again) `Registered`.
    pub async fn registered(&self) -> Result<()> {
        let mut rx = self.state.clone();
        let r = rx
            .wait_for(|s| {
                matches!(
                    s,
                    RegistrationState::Registered { .. } | RegistrationState::Deregistered
                )
            })
            .await
            .map_err(|_| closed())?;
        match &*r {
            RegistrationState::Registered { .. } => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Closed,
                "registration was deregistered",
            )),
        }
    }

    async fn rewrite(&self, f: impl FnOnce(&mut Instance)) -> Result<()> {
        let (value, previous) = {
            let mut inst = self.instance.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = inst.clone();
            f(&mut next);
            next.validate()?;
            let previous = std::mem::replace(&mut *inst, next);
            (inst.encode(), previous)
        };
        let result = self.send_update(value).await;
        if let Err(e) = &result
            && !e.is_temporary()
        {
            // Refused for good (too large, not allowed): the registration keeps its last
            // written value, and so does the handle.
            *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = previous;
        }
        result
    }

    async fn send_update(&self, value: Bytes) -> Result<()> {
        let (done_tx, done_rx) = oneshot::channel();
        send(
            &self.keeper,
            Cmd::Update {
                key: self.key.clone(),
                token: self.token,
                value,
                done: done_tx,
            },
        )?;
        done_rx.await.map_err(|_| closed())?
    }

    /// Takes the instance out of routing (`false`) or back in (`true`), keeping it listed
    /// (Dispatch's disable/enable). If the write fails, the new state is still written at the next
    /// successful attempt.
    pub async fn set_online(&self, online: bool) -> Result<()> {
        let state = if online {
            InstanceState::Online
        } else {
            InstanceState::Offline
        };
        self.rewrite(|i| i.state = state).await
    }

    /// Replaces the metadata in place.
    pub async fn set_metadata(&self, metadata: BTreeMap<String, String>) -> Result<()> {
        self.rewrite(|i| i.metadata = metadata).await
    }

    /// Updates metadata with `f`.
    pub async fn update(&self, f: impl FnOnce(&mut Instance)) -> Result<()> {
        self.rewrite(|i| {
            let (service, id) = (i.service.clone(), i.id.clone());
            f(i);
            // Identity cannot change: it is the key.
            i.service = service;
            i.id = id;
        })
        .await
    }

    /// Deregisters at once: the key is deleted (or the dedicated lease revoked) before this returns.
    /// If the backend is unreachable the delete is retried in the background, and the key goes
    /// with its lease in any case.
    pub async fn deregister(mut self) -> Result<()> {
        self.live = false;
        self.cancelled.store(true, Ordering::SeqCst);
        let (done_tx, done_rx) = oneshot::channel();
        send(
            &self.keeper,
            Cmd::Remove {
                key: self.key.clone(),
                token: self.token,
                done: Some(done_tx),
            },
        )?;
        let result = done_rx.await.map_err(|_| closed())?;
        self.observers.settle().await;
        result
    }

    /// Graceful shutdown: goes offline (out of routing, still listed), keeps serving for `grace`,
    /// then deregisters.
    pub async fn drain(self, grace: Duration) -> Result<()> {
        if let Err(e) = self.set_online(false).await {
            tracing::warn!(key = %self.key, error = %e, "drain: could not mark offline; deregistering after the grace period anyway");
        }
        tokio::time::sleep(grace).await;
        self.deregister().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.live {
            self.cancelled.store(true, Ordering::SeqCst);
            let _ = self.keeper.send(Cmd::Remove {
                key: self.key.clone(),
                token: self.token,
                done: None,
            });
        }
    }
}

/// Sends a command to a keeper.
pub(crate) fn send(tx: &mpsc::UnboundedSender<Cmd>, cmd: Cmd) -> Result<()> {
    tx.send(cmd).map_err(|_| closed())
}
