//! Dispatch (Dispatch.Service): route calls by key to the owning instance through `tower` services.
//!
//! A [`Dispatcher`] turns instances into clients with a factory, once per instance, and drops a
//! client when its instance leaves the service's online set.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::join_all;
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceExt};

use crate::model::instance::Instance;
use crate::read::directory::Directory;
use crate::route::select::Selection;

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
    /// Routes over these instances only, if set.
    selection: Option<Selection>,
    factory: Arc<dyn Fn(&Instance) -> S + Send + Sync>,
    clients: Arc<Clients<S>>,
    /// Drops clients of departed instances; aborted with the dispatcher.
    _pruner: JoinSet<()>,
}

impl<S> fmt::Debug for Dispatcher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("service", &self.service)
            .field("clients", &lock(&self.clients).len())
            .finish()
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
        let mut pruner = JoinSet::new();
        pruner.spawn(prune(
            directory.clone(),
            service.clone(),
            Arc::downgrade(&clients),
        ));
        Dispatcher {
            directory,
            service,
            selection: None,
            factory: Arc::new(factory),
            clients,
            _pruner: pruner,
        }
    }

    /// A dispatcher over the instances `selection` selects (see [`Selector`](crate::Selector)):
    /// keys are routed on the ring of the selected instances only.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use registry_engine::{Directory, Dispatcher, Instance, Selector};
    /// use tower::service_fn;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let dir = Directory::new();
    /// let src = dir.source("static", 10).unwrap();
    /// src.publish("kv", [
    ///     Instance::new("kv", "kv-1").addr("x:1").version("1.0.0"),
    ///     Instance::new("kv", "kv-2").addr("x:1").version("2.0.0"),
    /// ], 0);
    /// let v2 = Selector::new().version_prefix("2").on(&dir, "kv");
    /// let d = Dispatcher::with_selection(v2, |inst: &Instance| {
    ///     let id = inst.id.clone();
    ///     service_fn(move |_: ()| std::future::ready(Ok::<_, Infallible>(id.clone())))
    /// });
    /// assert_eq!(d.call("any key", ()).await.unwrap(), "kv-2");
    /// # }
    /// ```
    pub fn with_selection(
        selection: Selection,
        factory: impl Fn(&Instance) -> S + Send + Sync + 'static,
    ) -> Self {
        let mut d = Dispatcher::new(
            selection.directory().clone(),
            selection.service().to_owned(),
            factory,
        );
        d.selection = Some(selection);
        d
    }

    /// The service dispatched to.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The number of clients currently held (one per instance that was routed to and is still
    /// online).
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    fn client(&self, inst: &Arc<Instance>) -> S {
        let mut clients = lock(&self.clients);
        if let Some((held, svc)) = clients.get(&inst.id)
            && held == inst
        {
            return svc.clone();
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
        match &self.selection {
            Some(sel) => sel.find(key),
            None => self.directory.find(&self.service, key),
        }
    }

    /// Up to `count` distinct instances walking the ring from `key`: the owner, then the
    /// instances a call fails over to, in order.
    pub fn owners(&self, count: usize, key: impl AsRef<[u8]>) -> Vec<Arc<Instance>> {
        match &self.selection {
            Some(sel) => sel.find_n(count, key),
            None => self.directory.find_n(count, &self.service, key),
        }
    }

    /// Calls the owner of `key` and, as `failover` says, the next distinct instances on the ring
    /// when it fails: each attempt within the failover's timeout, until one succeeds, an outcome
    /// is not to be retried, or `failover.attempts` instances were tried (the last outcome is
    /// returned). The request is cloned for each attempt.
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_engine::{Directory, DispatchError, Dispatcher, Failover, Instance};
    /// use tower::service_fn;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let dir = Directory::new();
    /// let src = dir.source("static", 10).unwrap();
    /// src.publish("kv", (1..=3).map(|i| Instance::new("kv", format!("kv-{i}")).addr("x:1")), 0);
    /// let owner = dir.find("kv", "k").unwrap().id.clone();
    /// // The owner's client fails; the others answer.
    /// let d = Dispatcher::new(dir.clone(), "kv", move |inst: &Instance| {
    ///     let (id, down) = (inst.id.clone(), inst.id == owner);
    ///     service_fn(move |_: ()| {
    ///         let id = id.clone();
    ///         async move { if down { Err("connection refused") } else { Ok(id) } }
    ///     })
    /// });
    /// let policy = Failover::new().attempts(3).timeout(Duration::from_millis(500));
    /// let served_by = d.call_with("k", (), &policy).await.unwrap();
    /// assert_eq!(served_by, dir.find_n(2, "kv", "k")[1].id);
    /// // Without failover the owner's error is the answer.
    /// let once = d.call_with("k", (), &Failover::new().attempts(1)).await;
    /// assert!(matches!(once, Err(DispatchError::Service("connection refused"))));
    /// # }
    /// ```
    pub async fn call_with<R>(
        &self,
        key: impl AsRef<[u8]>,
        request: R,
        failover: &Failover<S::Response, S::Error>,
    ) -> Result<S::Response, DispatchError<S::Error>>
    where
        S: Service<R>,
        R: Clone,
    {
        let targets = self.owners(failover.attempts, key);
        self.call_instances(&targets, request, failover).await
    }

    /// Calls `targets` in turn as [`call_with`](Self::call_with) calls a key's owners: each
    /// attempt within the failover's timeout, the next one only if the failover says so. For a
    /// caller that chooses the instances itself (e.g. skipping those it has ejected from
    /// [`owners`](Self::owners)' list); no target is `ServiceUnavailable`.
    pub async fn call_instances<R>(
        &self,
        targets: &[Arc<Instance>],
        request: R,
        failover: &Failover<S::Response, S::Error>,
    ) -> Result<S::Response, DispatchError<S::Error>>
    where
        S: Service<R>,
        R: Clone,
    {
        let Some((last, earlier)) = targets.split_last() else {
            return Err(self.unavailable());
        };
        for inst in earlier {
            let outcome = attempt(self.client(inst), request.clone(), failover.timeout).await;
            if !(failover.retry)(&outcome) {
                return outcome;
            }
            tracing::debug!(service = %self.service, id = %inst.id, "dispatch: failing over to the next instance");
        }
        attempt(self.client(last), request, failover.timeout).await
    }

    /// This dispatcher as a `tower` [`Service`] taking whole requests: `key` extracts each
    /// request's routing key, and calls fail over as [`DispatchService::failover`] sets
    /// (by default [`Failover::new`]). See [`DispatchService`] for an example.
    pub fn into_service<R, K, F>(self, key: F) -> DispatchService<S, R, F>
    where
        S: Service<R>,
        F: Fn(&R) -> K,
        K: AsRef<[u8]>,
    {
        DispatchService {
            dispatcher: Arc::new(self),
            key: Arc::new(key),
            failover: Failover::new(),
            _request: PhantomData,
        }
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

/// One attempt: `svc` called with `request` within `timeout`.
async fn attempt<S, R>(
    svc: S,
    request: R,
    timeout: Option<Duration>,
) -> Result<S::Response, DispatchError<S::Error>>
where
    S: Service<R>,
{
    let call = svc.oneshot(request);
    match timeout {
        None => call.await.map_err(DispatchError::Service),
        Some(t) => match tokio::time::timeout(t, call).await {
            Ok(outcome) => outcome.map_err(DispatchError::Service),
            Err(_) => Err(DispatchError::Timeout),
        },
    }
}

type RetryIf<T, E> = Arc<dyn Fn(&Result<T, DispatchError<E>>) -> bool + Send + Sync>;

/// How a dispatched call fails over: how many distinct instances to try, each attempt's timeout,
/// and which outcomes move on to the next instance.
///
/// The default ([`Failover::new`]): two attempts (the owner, then the next instance on the
/// ring), no timeout, and any error or timeout is retried. Retrying sends the request again:
/// use it for requests that are safe to repeat.
///
/// ```
/// use std::time::Duration;
/// use registry_engine::{DispatchError, Failover};
///
/// // Three instances at most, 200 ms each, retrying timeouts only.
/// let policy: Failover<String, std::io::Error> = Failover::new()
///     .attempts(3)
///     .timeout(Duration::from_millis(200))
///     .retry_if(|outcome| matches!(outcome, Err(DispatchError::Timeout)));
/// assert_eq!(policy.max_attempts(), 3);
/// ```
pub struct Failover<T, E> {
    attempts: usize,
    timeout: Option<Duration>,
    retry: RetryIf<T, E>,
}

impl<T, E> Clone for Failover<T, E> {
    fn clone(&self) -> Self {
        Failover {
            attempts: self.attempts,
            timeout: self.timeout,
            retry: self.retry.clone(),
        }
    }
}

impl<T, E> fmt::Debug for Failover<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field("attempts", &self.attempts)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<T, E> Default for Failover<T, E> {
    fn default() -> Self {
        Failover::new()
    }
}

impl<T, E> Failover<T, E> {
    /// Two attempts, no timeout, every error and timeout retried.
    pub fn new() -> Self {
        Failover {
            attempts: 2,
            timeout: None,
            retry: Arc::new(|outcome| {
                matches!(
                    outcome,
                    Err(DispatchError::Timeout | DispatchError::Service(_))
                )
            }),
        }
    }

    /// How many distinct instances a call may try, the owner included (at least 1; fewer if the
    /// service has fewer instances). 1 turns failover off.
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Each attempt's timeout (the whole call may take up to `attempts` times as long). An
    /// attempt that times out ends with [`DispatchError::Timeout`]. For streaming responses it
    /// bounds the time to the response, not the stream.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Which outcomes of an attempt move on to the next instance (the last attempt's outcome is
    /// returned whatever it is). A response can be retried too (e.g. a gRPC `UNAVAILABLE`
    /// status in its headers).
    pub fn retry_if(
        mut self,
        retry: impl Fn(&Result<T, DispatchError<E>>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry = Arc::new(retry);
        self
    }

    /// The most instances a call tries.
    pub fn max_attempts(&self) -> usize {
        self.attempts
    }

    /// The per-attempt timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether `outcome` moves on to the next instance.
    pub fn should_retry(&self, outcome: &Result<T, DispatchError<E>>) -> bool {
        (self.retry)(outcome)
    }
}

/// A [`Dispatcher`] as a `tower` [`Service`]: routes each request by the key a closure extracts
/// from it, with failover. From [`Dispatcher::into_service`] or a [`DispatchLayer`]. Cheap to
/// clone; clones share the dispatcher and its clients.
///
/// A dispatcher is a `tower` service this way: [`Dispatcher::into_service`] (or a [`DispatchLayer`] over a
/// client factory) gives a [`DispatchService`] that takes the key from each request, calls the
/// key's owner, and, when the owner fails or does not answer within the per-attempt timeout,
/// the next distinct instance on the ring ([`Directory::find_n`]), as set by a [`Failover`].
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use registry_engine::{Directory, Dispatcher, Failover, Instance};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dir = Directory::new();
/// let src = dir.source("static", 10).unwrap();
/// src.publish("kv", (1..=3).map(|i| Instance::new("kv", format!("kv-{i}")).addr("x:1")), 0);
///
/// // One client per instance; here a client answers with its instance's id.
/// let dispatcher = Dispatcher::new(dir.clone(), "kv", |inst: &Instance| {
///     let id = inst.id.clone();
///     service_fn(move |req: (String, u32)| {
///         let id = id.clone();
///         async move { Ok::<_, Infallible>(format!("{id} got {req:?}")) }
///     })
/// });
/// let svc = dispatcher
///     .into_service(|req: &(String, u32)| req.0.clone())
///     .failover(Failover::new().attempts(2).timeout(Duration::from_secs(1)));
/// let reply = svc.oneshot(("user-42".to_owned(), 7)).await.unwrap();
/// let owner = dir.find("kv", "user-42").unwrap();
/// assert!(reply.starts_with(&owner.id));
/// # }
/// ```
///
/// Requests must be `Clone` (a failed attempt's request is sent again). The service is always
/// ready: the readiness of each instance's client is awaited inside the call.
pub struct DispatchService<S, R, F>
where
    S: Service<R>,
{
    dispatcher: Arc<Dispatcher<S>>,
    key: Arc<F>,
    failover: Failover<S::Response, S::Error>,
    _request: PhantomData<fn(R)>,
}

impl<S: Service<R>, R, F> Clone for DispatchService<S, R, F> {
    fn clone(&self) -> Self {
        DispatchService {
            dispatcher: self.dispatcher.clone(),
            key: self.key.clone(),
            failover: self.failover.clone(),
            _request: PhantomData,
        }
    }
}

impl<S: Service<R>, R, F> fmt::Debug for DispatchService<S, R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchService")
            .field("dispatcher", &self.dispatcher)
            .field("failover", &self.failover)
            .finish()
    }
}

impl<S: Service<R>, R, F> DispatchService<S, R, F> {
    /// Sets how calls fail over.
    pub fn failover(mut self, failover: Failover<S::Response, S::Error>) -> Self {
        self.failover = failover;
        self
    }

    /// The dispatcher (for [`Dispatcher::owner`], [`Dispatcher::client_count`], ...).
    pub fn dispatcher(&self) -> &Dispatcher<S> {
        &self.dispatcher
    }
}

impl<S, R, F, K> Service<R> for DispatchService<S, R, F>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    R: Clone + Send + 'static,
    F: Fn(&R) -> K + Send + Sync + 'static,
    K: AsRef<[u8]>,
{
    type Response = S::Response;
    type Error = DispatchError<S::Error>;
    type Future =
        Pin<Box<dyn Future<Output = Result<S::Response, DispatchError<S::Error>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let key = (self.key)(&request).as_ref().to_vec();
        let dispatcher = self.dispatcher.clone();
        let failover = self.failover.clone();
        Box::pin(async move { dispatcher.call_with(key, request, &failover).await })
    }
}

/// A `tower` [`Layer`] that turns a client factory (`Fn(&Instance) -> S`, one client per
/// instance) into a [`DispatchService`] for one service of a directory.
///
/// Layering creates a [`Dispatcher`], so it must happen inside a tokio runtime.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use registry_engine::{Directory, DispatchLayer, Instance};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dir = Directory::new();
/// let src = dir.source("static", 10).unwrap();
/// src.publish("kv", (1..=3).map(|i| Instance::new("kv", format!("kv-{i}")).addr("x:1")), 0);
///
/// let svc = ServiceBuilder::new()
///     .layer(
///         DispatchLayer::new(&dir, "kv", |req: &String| req.clone())
///             .attempts(2)
///             .timeout(Duration::from_millis(500)),
///     )
///     .service(|inst: &Instance| {
///         let id = inst.id.clone();
///         service_fn(move |_: String| std::future::ready(Ok::<_, Infallible>(id.clone())))
///     });
/// let served_by = svc.oneshot("user-42".to_owned()).await.unwrap();
/// assert_eq!(served_by, dir.find("kv", "user-42").unwrap().id);
/// # }
/// ```
pub struct DispatchLayer<R, F> {
    directory: Directory,
    service: String,
    selection: Option<Selection>,
    key: Arc<F>,
    attempts: usize,
    timeout: Option<Duration>,
    _request: PhantomData<fn(R)>,
}

impl<R, F> Clone for DispatchLayer<R, F> {
    fn clone(&self) -> Self {
        DispatchLayer {
            directory: self.directory.clone(),
            service: self.service.clone(),
            selection: self.selection.clone(),
            key: self.key.clone(),
            attempts: self.attempts,
            timeout: self.timeout,
            _request: PhantomData,
        }
    }
}

impl<R, F> fmt::Debug for DispatchLayer<R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchLayer")
            .field("service", &self.service)
            .field("selection", &self.selection)
            .field("attempts", &self.attempts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<R, F> DispatchLayer<R, F> {
    /// Dispatches to `service`'s instances in `directory`, by the key `key` extracts from each
    /// request; failover as [`Failover::new`] until set otherwise.
    pub fn new<K>(directory: &Directory, service: impl Into<String>, key: F) -> Self
    where
        F: Fn(&R) -> K,
        K: AsRef<[u8]>,
    {
        DispatchLayer {
            directory: directory.clone(),
            service: service.into(),
            selection: None,
            key: Arc::new(key),
            attempts: Failover::<(), ()>::new().max_attempts(),
            timeout: None,
            _request: PhantomData,
        }
    }

    /// Dispatches to the instances `selection` selects (see [`Dispatcher::with_selection`]).
    pub fn selected<K>(selection: Selection, key: F) -> Self
    where
        F: Fn(&R) -> K,
        K: AsRef<[u8]>,
    {
        let mut layer = DispatchLayer::new(selection.directory(), selection.service(), key);
        layer.selection = Some(selection);
        layer
    }

    /// See [`Failover::attempts`].
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// See [`Failover::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<M, S, R, F> Layer<M> for DispatchLayer<R, F>
where
    M: Fn(&Instance) -> S + Send + Sync + 'static,
    S: Service<R> + Clone + Send + 'static,
{
    type Service = DispatchService<S, R, F>;

    fn layer(&self, factory: M) -> Self::Service {
        let dispatcher = match &self.selection {
            Some(sel) => Dispatcher::with_selection(sel.clone(), factory),
            None => Dispatcher::new(self.directory.clone(), self.service.clone(), factory),
        };
        let mut failover = Failover::new().attempts(self.attempts);
        if let Some(t) = self.timeout {
            failover = failover.timeout(t);
        }
        DispatchService {
            dispatcher: Arc::new(dispatcher),
            key: self.key.clone(),
            failover,
            _request: PhantomData,
        }
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
            // O(clients × log n): the service may have 100,000 instances, a dispatcher few clients.
            lock(&clients).retain(|id, _| snap.online().contains_id(id));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
