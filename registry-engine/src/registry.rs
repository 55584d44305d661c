//! The registry: a process's entry point. It registers instances (write side: one keeper per
//! lease, the shared one by default, so keeping a process's registrations alive costs one
//! keep-alive per heartbeat however many services it registers) and discovers services into its
//! [`Directory`] (read side).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_core::backend::{Backend, CondOutcome, Condition};
use registry_core::config::{check_duration, check_max_duration};
use registry_core::error::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, oneshot, watch};

use crate::model::instance::Instance;
use crate::model::layout::{DEFAULT_NAMESPACE, Layout};
use crate::model::names::validate_service;
use crate::read::directory::Directory;
use crate::read::discovery::{Discovery, DiscoveryOptions, Running, Scope};
use crate::telemetry::Telemetry;
use crate::write::keeper::{Claims, Cmd, Fast, Keeper};
use crate::write::observer::{Observers, RegistrationObserver};
use crate::write::options::{DEFAULT_WRITE_CONCURRENCY, LeaseOptions, RegisterOptions};
use crate::write::registration::{Registration, next_token, send};
use crate::write::state::{RegistrationState, StateTx, closed};
use crate::write::stats::{RegistryCounts, RegistryStats};

/// Builds a [`Registry`].
#[derive(Debug)]
pub struct RegistryBuilder {
    backend: Arc<dyn Backend>,
    namespace: String,
    lease: LeaseOptions,
    delay: Duration,
    op_timeout: Option<Duration>,
    write_concurrency: usize,
    directory: Option<Directory>,
    observer: Option<Arc<dyn RegistrationObserver>>,
}

impl RegistryBuilder {
    /// The namespace (key prefix) instances live under; default `registry`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The shared lease's TTL (default 15 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.lease.ttl = ttl;
        self
    }

    /// The shared lease's keep-alive period (default 5 s).
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.lease.heartbeat = heartbeat;
        self
    }

    /// The default wait before a registration's first write (default none).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The deadline for each backend call made by the registry (default: the heartbeat, at most
    /// 10 s). A call past it counts as a temporary failure.
    pub fn op_timeout(mut self, t: Duration) -> Self {
        self.op_timeout = Some(t);
        self
    }

    /// How many registration writes each lease's keeper keeps in flight at once (default
    /// [`DEFAULT_WRITE_CONCURRENCY`]): registrations made concurrently, or with
    /// [`Registry::register_many`], are written this many at a time, each still with its own
    /// conditional write and its own outcome. `1` writes them one after another. Must be at least 1
    /// and at most 4,096.
    ///
    /// On a backend with a batch call of its own (Redis, the memory store: see
    /// [`Capabilities::batch_writes`](registry_core::Capabilities::batch_writes)), they go in
    /// batches of the backend's size instead, two batch calls in flight (one with `1`).
    pub fn write_concurrency(mut self, n: usize) -> Self {
        self.write_concurrency = n;
        self
    }

    /// Feeds discoveries into an existing directory instead of a new one.
    pub fn directory(mut self, directory: Directory) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Tells `observer` what the registry's keepers do (leases granted, kept alive and ended,
    /// instances written and removed), in order: for add-ons that follow the registry's own
    /// registrations, such as the Consul catalog mirror. See [`RegistrationObserver`].
    pub fn observer(mut self, observer: Arc<dyn RegistrationObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Validates the options against the backend's capabilities and builds the registry. A TTL
    /// below the backend's minimum is an error naming both; so is a heartbeat not shorter than the
    /// TTL. Every duration must be at most [`MAX_DURATION`](registry_core::config::MAX_DURATION), and the
    /// operation timeout positive ([`InvalidInput`](ErrorKind::InvalidInput) otherwise).
    pub fn build(self) -> Result<Registry> {
        let layout = Layout::new(&self.namespace)?;
        self.lease.validate(&*self.backend)?;
        check_max_duration("registration delay", self.delay)?;
        if let Some(t) = self.op_timeout {
            check_duration("operation timeout", t)?;
        }
        if !(1..=4096).contains(&self.write_concurrency) {
            return Err(Error::invalid(format!(
                "write concurrency {} must be between 1 and 4096",
                self.write_concurrency
            )));
        }
        let op_timeout = self
            .op_timeout
            .unwrap_or_else(|| self.lease.heartbeat.min(Duration::from_secs(10)));
        let (halt, _) = watch::channel(false);
        Ok(Registry {
            inner: Arc::new(RegistryInner {
                backend: self.backend,
                layout,
                lease: self.lease,
                delay: self.delay,
                op_timeout,
                write_concurrency: self.write_concurrency,
                directory: self.directory.unwrap_or_default(),
                shared: Mutex::new(None),
                keepers: Mutex::new(Vec::new()),
                discoveries: tokio::sync::Mutex::new(HashMap::new()),
                stats: Arc::new(RegistryStats {
                    tel: Telemetry::new(&self.namespace),
                    ..RegistryStats::default()
                }),
                observers: Observers::new(self.observer),
                halt,
            }),
        })
    }
}

/// A process's registry: registers instances (sharing one lease) and discovers services into its
/// [`Directory`]. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    /// The discoveries started by `discover`/`discover_all` that still run, by scope.
    discoveries: tokio::sync::Mutex<HashMap<Scope, std::sync::Weak<Running>>>,
    backend: Arc<dyn Backend>,
    layout: Layout,
    lease: LeaseOptions,
    delay: Duration,
    op_timeout: Duration,
    write_concurrency: usize,
    directory: Directory,
    /// The shared lease's keeper, and what it lets callers write themselves.
    shared: Mutex<Option<(mpsc::UnboundedSender<Cmd>, Arc<Claims>)>>,
    /// Every keeper this registry started (the shared one and those of dedicated leases), for
    /// [`Registry::shutdown`].
    keepers: Mutex<Vec<mpsc::UnboundedSender<Cmd>>>,
    stats: Arc<RegistryStats>,
    observers: Observers,
    halt: watch::Sender<bool>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("backend", &self.inner.backend)
            .field("namespace", &self.inner.layout.namespace())
            .field("lease", &self.inner.lease)
            .finish()
    }
}

impl Registry {
    /// A builder over `backend`.
    pub fn builder(backend: Arc<dyn Backend>) -> RegistryBuilder {
        RegistryBuilder {
            backend,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            lease: LeaseOptions::default(),
            delay: Duration::ZERO,
            op_timeout: None,
            write_concurrency: DEFAULT_WRITE_CONCURRENCY,
            directory: None,
            observer: None,
        }
    }

    /// A registry with default options (TTL 15 s, heartbeat 5 s, namespace `registry`).
    pub fn new(backend: Arc<dyn Backend>) -> Result<Registry> {
        Registry::builder(backend).build()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The namespace instances live under.
    pub fn namespace(&self) -> &str {
        self.inner.layout.namespace()
    }

    /// The shared lease's options.
    pub fn lease_options(&self) -> LeaseOptions {
        self.inner.lease
    }

    /// The directory discoveries of this registry feed.
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// What this registry has done so far.
    pub fn stats(&self) -> RegistryCounts {
        self.inner.stats.counts()
    }

    /// Registers `instance` with the registry's defaults. See [`register_with`](Self::register_with).
    pub async fn register(&self, instance: Instance) -> Result<Registration> {
        self.register_with(instance, RegisterOptions::default())
            .await
    }

    /// Registers `instance` and keeps it registered until the handle is deregistered or dropped.
    ///
    /// Without a delay, returns once the first write has been attempted: `Ok` with the handle in
    /// state `Registered` on success, or in state `Registering` when the backend is temporarily
    /// unreachable (it keeps trying in the background: see [`Registration::registered`]). Invalid
    /// instances, an instance already registered by this registry, and permanent refusals
    /// (`PermissionDenied`, ...) are errors. With a delay, returns at once in state `Registering`.
    ///
    /// While the registry holds its shared lease, the first write is made by the calling task
    /// itself (a create on that lease), not handed to the keeper's task and waited for: that
    /// spares two wake-ups of other threads, most of a registration's latency on an idle process.
    /// Whatever it cannot write that way (the id is there already, the lease has just ended, the
    /// backend does not answer) goes through the keeper, with the same outcomes.
    pub async fn register_with(
        &self,
        instance: Instance,
        opts: RegisterOptions,
    ) -> Result<Registration> {
        if opts.dedicated.is_none() && opts.delay.unwrap_or(self.inner.delay).is_zero() {
            return self.register_now(instance, opts).await;
        }
        self.start_registration(instance, &opts)?.finish().await
    }

    /// A registration on the shared lease, without a delay: its first write is made by the
    /// caller's own task when the keeper allows it (it holds a lease, and the key is neither its
    /// member's nor being deleted: see the keeper's `claims`), which spares the two hand-offs
    /// between tasks that a write through the keeper costs (BENCHMARKS.md section 1.1); the
    /// keeper then takes the registration as written. Anything else goes through the keeper, as
    /// [`start_registration`](Self::start_registration) does.
    async fn register_now(
        &self,
        instance: Instance,
        opts: RegisterOptions,
    ) -> Result<Registration> {
        instance.validate()?;
        let (keeper, claims) = self.shared_keeper();
        let key = self.inner.layout.key(&instance.service, &instance.id);
        let Some(lease) = claims.claim(&key) else {
            return self.start_registration(instance, &opts)?.finish().await;
        };
        let value = instance.encode();
        let (mut handle, state_tx) = self.new_handle(key.clone(), instance, &keeper);
        let (token, cancelled) = (handle.token, handle.cancelled.clone());
        let write = self
            .inner
            .backend
            .put_if(&key, value.clone(), Some(&lease), Condition::Absent);
        let fast = match tokio::time::timeout(self.inner.op_timeout, write).await {
            Ok(Ok(CondOutcome::Applied(_))) => {
                let stats = &self.inner.stats;
                stats.record(&stats.puts, "registry_puts_total");
                tracing::info!(key = %key, lease = %lease, "registered");
                state_tx.send_replace(RegistrationState::Registered {
                    since: tokio::time::Instant::now(),
                    lease: lease.clone(),
                });
                Fast::Written(lease)
            }
            // Not answered in time: it may still land.
            Err(_) => Fast::Claimed { late: true },
            Ok(Err(e)) => Fast::Claimed {
                late: e.kind() == ErrorKind::Timeout,
            },
            // The key is there already, the lease has ended, the backend refused: the keeper
            // writes it, with everything it knows.
            _ => Fast::Claimed { late: false },
        };
        let (done_tx, done_rx) = match fast {
            Fast::Written(_) => (None, None),
            _ => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        let add = Cmd::Add {
            key,
            token,
            cancelled,
            value,
            takeover: opts.takeover,
            fast,
            state: state_tx,
            done: done_tx,
        };
        if let Err(e) = send(&keeper, add) {
            claims.release(&handle.key);
            handle.live = false;
            return Err(e);
        }
        Started {
            handle,
            done: done_rx,
        }
        .finish()
        .await
    }

    /// Registers many instances at once with the registry's defaults, and returns each one's
    /// outcome in the order given. See [`register_many_with`](Self::register_many_with).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use registry_engine::{Instance, Registry};
    /// # async fn demo(backend: Arc<dyn registry_core::Backend>) -> registry_core::Result<()> {
    /// let registry = Registry::new(backend)?;
    /// let instances = (0..1000).map(|i| Instance::new("web", format!("w{i}")).addr("10.0.0.1:80"));
    /// let mut handles = Vec::new();
    /// for (i, outcome) in registry.register_many(instances).await.into_iter().enumerate() {
    ///     match outcome {
    ///         Ok(handle) => handles.push(handle),
    ///         // Only this one failed (say, its id is held by another process: `Conflict`).
    ///         Err(e) => eprintln!("w{i}: {e}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_many(
        &self,
        instances: impl IntoIterator<Item = Instance>,
    ) -> Vec<Result<Registration>> {
        self.register_many_with(instances, RegisterOptions::default())
            .await
    }

    /// Registers many instances at once, each with `opts`, and returns each one's outcome in the
    /// order given: the same outcome [`register_with`](Self::register_with) would give it alone.
    ///
    /// All the registrations are handed to the keeper in one go, which writes them concurrently
    /// ([`RegistryBuilder::write_concurrency`] in flight, or in batches on a backend that has a
    /// batch call), each with its own conditional write on the one shared lease: a registration
    /// that fails (an invalid instance, an id another live owner holds, a value the backend
    /// refuses) fails alone, and the others are registered.
    /// Registering the same instance id twice in one call registers the first and refuses the
    /// second. Calling [`register`](Self::register) concurrently (say with `join_all`) is written
    /// the same way; this saves the caller the futures.
    pub async fn register_many_with(
        &self,
        instances: impl IntoIterator<Item = Instance>,
        opts: RegisterOptions,
    ) -> Vec<Result<Registration>> {
        let started: Vec<Result<Started>> = instances
            .into_iter()
            .map(|i| self.start_registration(i, &opts))
            .collect();
        let mut out = Vec::with_capacity(started.len());
        for s in started {
            out.push(match s {
                Ok(s) => s.finish().await,
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Validates `instance`, makes its handle and hands its first write to the keeper (or, with a
    /// delay, schedules it): everything [`register_with`](Self::register_with) does but wait.
    fn start_registration(&self, instance: Instance, opts: &RegisterOptions) -> Result<Started> {
        instance.validate()?;
        if let Some(delay) = opts.delay {
            check_max_duration("registration delay", delay)?;
        }
        let keeper = match opts.dedicated {
            Some(lease) => {
                lease.validate(&*self.inner.backend)?;
                self.spawn_keeper(lease).0
            }
            None => self.shared_keeper().0,
        };
        let key = self.inner.layout.key(&instance.service, &instance.id);
        let value = instance.encode();
        let delay = opts.delay.unwrap_or(self.inner.delay);
        let takeover = opts.takeover;
        let (handle, state_tx) = self.new_handle(key.clone(), instance, &keeper);
        let (token, cancelled) = (handle.token, handle.cancelled.clone());
        if delay.is_zero() {
            let (done_tx, done_rx) = oneshot::channel();
            if let Err(e) = send(
                &keeper,
                Cmd::Add {
                    key,
                    token,
                    cancelled,
                    value,
                    takeover,
                    fast: Fast::No,
                    state: state_tx,
                    done: Some(done_tx),
                },
            ) {
                let mut handle = handle;
                handle.live = false;
                return Err(e);
            }
            Ok(Started {
                handle,
                done: Some(done_rx),
            })
        } else {
            let keeper = keeper.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // Deregistered or dropped meanwhile: nothing to write. (The keeper checks again
                // when the command arrives, as the handle may go between this check and that.)
                if cancelled.load(Ordering::SeqCst) {
                    state_tx.send_replace(RegistrationState::Deregistered);
                    return;
                }
                let _ = keeper.send(Cmd::Add {
                    key,
                    token,
                    cancelled,
                    value,
                    takeover,
                    fast: Fast::No,
                    state: state_tx,
                    done: None,
                });
            });
            Ok(Started { handle, done: None })
        }
    }

    /// The handle of a new registration of `instance` at `key` on `keeper`, in state
    /// `Registering`, and the sender of its state.
    fn new_handle(
        &self,
        key: String,
        instance: Instance,
        keeper: &mpsc::UnboundedSender<Cmd>,
    ) -> (Registration, StateTx) {
        let (state_tx, state_rx) = StateTx::new(
            RegistrationState::Registering { last_error: None },
            self.inner.stats.tel.clone(),
            &instance.service,
            &instance.id,
        );
        let handle = Registration {
            key,
            token: next_token(),
            cancelled: Arc::new(AtomicBool::new(false)),
            instance: Mutex::new(instance),
            keeper: keeper.clone(),
            state: state_rx,
            observers: self.inner.observers.clone(),
            live: true,
        };
        (handle, state_tx)
    }

    /// Starts discovering `service` into this registry's directory; returns once the first listing
    /// is loaded (or the first attempt failed: the view is then marked stale and retried). Stops when
    /// the returned handle is dropped.
    ///
    /// Calls for the same service while a discovery of it runs share that discovery (one watch):
    /// each gets a clone of it, and it stops when the last clone is dropped.
    pub async fn discover(&self, service: &str) -> Result<Discovery> {
        self.discover_shared(Scope::Service(service.to_owned()))
            .await
    }

    /// Discovers every service in the namespace (shared like [`discover`](Self::discover)).
    pub async fn discover_all(&self) -> Result<Discovery> {
        self.discover_shared(Scope::All).await
    }

    /// The running discovery of `scope` with default options, or a new one.
    async fn discover_shared(&self, scope: Scope) -> Result<Discovery> {
        // Held across the start, so that two first calls at once make one discovery.
        let mut running = self.inner.discoveries.lock().await;
        running.retain(|_, w| w.strong_count() > 0);
        if let Some(d) = running.get(&scope).and_then(Discovery::from_weak) {
            return Ok(d);
        }
        let d = self
            .discover_with(scope.clone(), DiscoveryOptions::default())
            .await?;
        running.insert(scope, d.downgrade());
        Ok(d)
    }

    /// The instances of `service` (online or offline) as the backend holds them now, read once,
    /// sorted by id, without starting a watch. Values that do not decode are skipped and logged.
    pub async fn get_service(&self, service: &str) -> Result<Vec<Instance>> {
        validate_service(service)?;
        let prefix = self.inner.layout.service_prefix(service);
        let listing = tokio::time::timeout(self.inner.op_timeout, self.inner.backend.list(&prefix))
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, "list timed out"))??;
        let mut out = Vec::with_capacity(listing.entries.len());
        for kv in &listing.entries {
            let decoded = match self.inner.layout.parse(&kv.key) {
                Some((s, id)) if s == service => Instance::decode(s, id, &kv.value),
                _ => continue,
            };
            match decoded {
                Ok(i) => out.push(i),
                Err(e) => {
                    self.inner
                        .stats
                        .tel
                        .count("registry_discovery_skipped_total");
                    tracing::warn!(key = %kv.key, error = %e, "get_service: skipping a value that is not a valid instance");
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Discovers `scope` with explicit options (poll mode, probing, backoff).
    pub async fn discover_with(&self, scope: Scope, opts: DiscoveryOptions) -> Result<Discovery> {
        Discovery::start(
            self.inner.backend.clone(),
            self.inner.layout.clone(),
            self.inner.directory.clone(),
            scope,
            opts.with_default_timeout(self.inner.op_timeout),
        )
        .await
    }

    /// Deregisters every registration of this registry (revoking its leases, which deletes their
    /// keys at once) and returns when the backend has confirmed it, or with the first error (what
    /// could not be deleted then goes with its lease's TTL). Handles still held afterwards are in
    /// state `Deregistered`; dropping them does nothing more. For a process's orderly exit.
    pub async fn shutdown(&self) -> Result<()> {
        let keepers: Vec<_> = self
            .inner
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        *self.inner.shared.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut first_error = None;
        for tx in keepers {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(Cmd::Shutdown { done: done_tx }).is_err() {
                continue; // That keeper has already stopped.
            }
            if let Ok(Err(e)) = done_rx.await {
                first_error.get_or_insert(e);
            }
        }
        self.inner.observers.settle().await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops every keep-alive of this registry at once without deregistering anything, as if the
    /// process had crashed: its instances disappear when their leases expire. For tests and demos.
    pub fn crash(&self) {
        self.inner.halt.send_replace(true);
    }

    fn shared_keeper(&self) -> (mpsc::UnboundedSender<Cmd>, Arc<Claims>) {
        let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(keeper) = shared.as_ref().filter(|(tx, _)| !tx.is_closed()) {
            return keeper.clone();
        }
        let keeper = self.spawn_keeper(self.inner.lease);
        *shared = Some(keeper.clone());
        keeper
    }

    fn spawn_keeper(&self, lease: LeaseOptions) -> (mpsc::UnboundedSender<Cmd>, Arc<Claims>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let keeper = Keeper::new(
            self.inner.backend.clone(),
            lease,
            self.inner.op_timeout,
            self.inner.write_concurrency,
            self.inner.stats.clone(),
            self.inner.observers.clone(),
            self.inner.layout.clone(),
        );
        let claims = keeper.claims();
        let span = tracing::info_span!("keeper", namespace = self.inner.layout.namespace());
        tokio::spawn(tracing::Instrument::instrument(
            keeper.run(rx, self.inner.halt.subscribe()),
            span,
        ));
        let mut keepers = self.inner.keepers.lock().unwrap_or_else(|p| p.into_inner());
        keepers.retain(|k| !k.is_closed());
        keepers.push(tx.clone());
        (tx, claims)
    }
}

/// A registration handed to its keeper, its first write not yet confirmed.
struct Started {
    handle: Registration,
    /// The first write's outcome (none with a delay: that registration returns at once).
    done: Option<oneshot::Receiver<Result<()>>>,
}

impl Started {
    /// Waits for the first write: the handle, or the error that refused it for good (a temporary
    /// failure still returns the handle, which keeps trying in the background).
    async fn finish(self) -> Result<Registration> {
        let Started { mut handle, done } = self;
        let Some(done) = done else {
            return Ok(handle);
        };
        match done.await {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) if e.is_temporary() || e.kind() == ErrorKind::LeaseNotFound => Ok(handle),
            Ok(Err(e)) => {
                handle.live = false;
                Err(e)
            }
            Err(_) => {
                handle.live = false;
                Err(closed())
            }
        }
    }
}

#[cfg(test)]
mod tests;
