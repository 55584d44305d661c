//! Dispatch (Dispatch.Service): route calls by key to the owning instance through `tower` services.
//!
//! A [`Dispatcher`] turns instances into clients with a factory, once per instance, and drops a
//! client when its instance leaves the service's online set.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::join_all;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use super::directory::Directory;
use super::instance::Instance;

/// Why a dispatched call did not produce a response.
#[derive(Debug)]
#[non_exhaustive]
pub enum DispatchError<E> {
    /// No online instance of the service (Dispatch's `service_unavailable`).
    ServiceUnavailable {
        /// The service asked for.
        service: String,
    },
    /// The call did not finish within its timeout.
    Timeout,
    /// The instance's service returned an error.
    Service(E),
}

impl<E: fmt::Display> fmt::Display for DispatchError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DispatchError::ServiceUnavailable { service } => {
                write!(f, "no online instance of service {service}")
            }
            DispatchError::Timeout => f.write_str("call timed out"),
            DispatchError::Service(e) => write!(f, "service error: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for DispatchError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DispatchError::Service(e) => Some(e),
            _ => None,
        }
    }
}

type Clients<S> = Mutex<HashMap<String, (Arc<Instance>, S)>>;

/// Routes requests for one service by key, over clients made from instances by a factory.
pub struct Dispatcher<S> {
    directory: Directory,
    service: String,
    factory: Arc<dyn Fn(&Instance) -> S + Send + Sync>,
    clients: Arc<Clients<S>>,
    pruner: JoinHandle<()>,
}

impl<S> fmt::Debug for Dispatcher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("service", &self.service)
            .field("clients", &lock(&self.clients).len())
            .finish()
    }
}

impl<S> Drop for Dispatcher<S> {
    fn drop(&mut self) {
        self.pruner.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S> Dispatcher<S>
where
    S: Clone + Send + 'static,
{
    /// A dispatcher for `service` over `directory`, making clients with `factory`. Must be created
    /// inside a tokio runtime (it spawns the task that drops clients of departed instances).
    pub fn new(
        directory: Directory,
        service: impl Into<String>,
        factory: impl Fn(&Instance) -> S + Send + Sync + 'static,
    ) -> Self {
        let service = service.into();
        let clients: Arc<Clients<S>> = Arc::new(Mutex::new(HashMap::new()));
        let pruner = tokio::spawn(prune(
            directory.clone(),
            service.clone(),
            Arc::downgrade(&clients),
        ));
        Dispatcher {
            directory,
            service,
            factory: Arc::new(factory),
            clients,
            pruner,
        }
    }

    /// The number of clients currently held (one per instance that was routed to and is still
    /// online).
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    fn client(&self, inst: &Arc<Instance>) -> S {
        let mut clients = lock(&self.clients);
        if let Some((held, svc)) = clients.get(&inst.id) {
            if held == inst {
                return svc.clone();
            }
        }
        let svc = (self.factory)(inst);
        clients.insert(inst.id.clone(), (inst.clone(), svc.clone()));
        svc
    }

    fn unavailable<E>(&self) -> DispatchError<E> {
        DispatchError::ServiceUnavailable {
            service: self.service.clone(),
        }
    }

    /// The instance that owns `key` now.
    pub fn owner(&self, key: impl AsRef<[u8]>) -> Option<Arc<Instance>> {
        self.directory.find(&self.service, key)
    }

    /// Calls the owner of `key`.
    pub async fn call<R>(
        &self,
        key: impl AsRef<[u8]>,
        request: R,
    ) -> Result<S::Response, DispatchError<S::Error>>
    where
        S: Service<R>,
    {
        let owner = self.owner(key).ok_or_else(|| self.unavailable())?;
        self.client(&owner)
            .oneshot(request)
            .await
            .map_err(DispatchError::Service)
    }

    /// Sends `request` to the owner of `key` without waiting for the response.
    pub fn cast<R>(&self, key: impl AsRef<[u8]>, request: R) -> Result<(), DispatchError<S::Error>>
    where
        S: Service<R>,
        S::Future: Send,
        R: Send + 'static,
    {
        let owner = self.owner(key).ok_or_else(|| self.unavailable())?;
        let svc = self.client(&owner);
        tokio::spawn(async move {
            let _ = svc.oneshot(request).await;
        });
        Ok(())
    }

    /// Calls up to `count` distinct instances walking the ring from `key`, in parallel, each within
    /// `timeout`; returns one result per instance, in ring order (owner first).
    pub async fn multi_call<R>(
        &self,
        count: usize,
        key: impl AsRef<[u8]>,
        request: R,
        timeout: Duration,
    ) -> Vec<(Arc<Instance>, Result<S::Response, DispatchError<S::Error>>)>
    where
        S: Service<R>,
        R: Clone,
    {
        let targets = self.directory.find_n(count, &self.service, key);
        let calls = targets.iter().map(|inst| {
            let svc = self.client(inst);
            let req = request.clone();
            async move {
                match tokio::time::timeout(timeout, svc.oneshot(req)).await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(DispatchError::Service(e)),
                    Err(_) => Err(DispatchError::Timeout),
                }
            }
        });
        let results = join_all(calls).await;
        targets.into_iter().zip(results).collect()
    }

    /// Sends `request` to up to `count` instances from `key` without waiting; returns how many were
    /// sent.
    pub fn multi_cast<R>(&self, count: usize, key: impl AsRef<[u8]>, request: R) -> usize
    where
        S: Service<R>,
        S::Future: Send,
        R: Clone + Send + 'static,
    {
        let targets = self.directory.find_n(count, &self.service, key);
        for inst in &targets {
            let svc = self.client(inst);
            let req = request.clone();
            tokio::spawn(async move {
                let _ = svc.oneshot(req).await;
            });
        }
        targets.len()
    }
}

/// Drops the clients of instances that left the online set, on every change of the service.
async fn prune<S>(directory: Directory, service: String, clients: Weak<Clients<S>>) {
    let mut rx = directory.subscribe(&service);
    loop {
        {
            let Some(clients) = clients.upgrade() else {
                return;
            };
            let snap = rx.borrow_and_update().clone();
            let online: std::collections::HashSet<&str> =
                snap.online().iter().map(|i| i.id.as_str()).collect();
            lock(&clients).retain(|id, _| online.contains(id.as_str()));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
