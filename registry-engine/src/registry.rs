//! Register (Pulse's Register, done right): publish instances under a lease, keep the lease alive,
//! and when it is lost, get a new one and write everything again, forever, with a visible state.
//!
//! A [`Registry`] shares one lease among all its registrations by default, so keeping a process's
//! registrations alive costs one keep-alive per heartbeat however many services it registers. A
//! registration may ask for a lease of its own instead.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::instance::{Instance, InstanceState, Layout};
use crate::read::directory::Directory;
use crate::read::discovery::{Discovery, DiscoveryOptions, Running, Scope};
use crate::telemetry::{StateTx, Telemetry};
use crate::write::keeper::{Cmd, Keeper};
use registry_core::backend::Backend;
use registry_core::config::{check_duration, check_max_duration};
use registry_core::error::{Error, ErrorKind, Result};
use registry_core::lease::LeaseId;

/// The default namespace under which instances are stored.
pub const DEFAULT_NAMESPACE: &str = "registry";
/// Pulse's baseline TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// Pulse's baseline heartbeat.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How many registration writes a lease's keeper has in flight at once by default (see
/// [`RegistryBuilder::write_concurrency`]).
pub const DEFAULT_WRITE_CONCURRENCY: usize = 64;

/// Where a registration stands. Watch it with [`Registration::watch_state`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RegistrationState {
    /// Not yet written (waiting for the delay, or the first write is being retried).
    Registering {
        /// Why the last attempt failed, if one did.
        last_error: Option<Error>,
    },
    /// Written and kept alive.
    Registered {
        /// When it was (last) written.
        since: Instant,
        /// The lease it is attached to.
        lease: LeaseId,
    },
    /// The lease was lost (keep-alive said `LeaseNotFound`, or the backend was unreachable for
    /// longer than the TTL): the instance is probably not visible to others. A new lease is being
    /// obtained and the registration written again.
    Lost {
        /// When it was lost.
        since: Instant,
        /// The last error seen.
        error: Error,
    },
    /// Another live owner (another process's lease) holds this instance id: it took the id over,
    /// or wrote it while our lease was lost. This registration does not fight it: it is written
    /// again (and becomes `Registered`) only once the other owner's key is gone.
    Conflict {
        /// When the conflict was first seen.
        since: Instant,
        /// The lease of the owner holding the id.
        holder: LeaseId,
    },
    /// Deregistered (explicitly, by drain, or by dropping the handle).
    Deregistered,
}

impl RegistrationState {
    /// A short name: `registering`, `registered`, `lost`, `conflict`, `deregistered`.
    pub fn name(&self) -> &'static str {
        match self {
            RegistrationState::Registering { .. } => "registering",
            RegistrationState::Registered { .. } => "registered",
            RegistrationState::Lost { .. } => "lost",
            RegistrationState::Conflict { .. } => "conflict",
            RegistrationState::Deregistered => "deregistered",
        }
    }

    /// Whether the state is `Registered`.
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationState::Registered { .. })
    }
}

impl fmt::Display for RegistrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrationState::Lost { error, .. } => write!(f, "lost ({error})"),
            RegistrationState::Registering {
                last_error: Some(e),
            } => write!(f, "registering (last attempt: {e})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Lease timing: how long a registration outlives its last heartbeat, and how often to beat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// The lease TTL.
    pub ttl: Duration,
    /// The keep-alive period; must be shorter than the TTL.
    pub heartbeat: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: DEFAULT_TTL,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

impl LeaseOptions {
    /// Checks the options against the backend's declared limits (and
    /// [`MAX_DURATION`](registry_core::config::MAX_DURATION), whatever the backend declares, so that no
    /// deadline computed from them can overflow).
    fn validate(&self, backend: &dyn Backend) -> Result<()> {
        check_duration("TTL", self.ttl)?;
        check_duration("heartbeat", self.heartbeat)?;
        let caps = backend.capabilities();
        if self.ttl < caps.min_ttl {
            return Err(Error::invalid(format!(
                "TTL {:?} is below the backend's minimum TTL {:?}",
                self.ttl, caps.min_ttl
            )));
        }
        if self.ttl > caps.max_ttl {
            return Err(Error::invalid(format!(
                "TTL {:?} is above the backend's maximum TTL {:?}",
                self.ttl, caps.max_ttl
            )));
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.ttl {
            return Err(Error::invalid(format!(
                "heartbeat {:?} must be positive and shorter than the TTL {:?}",
                self.heartbeat, self.ttl
            )));
        }
        Ok(())
    }
}

/// Per-registration options.
#[derive(Clone, Debug, Default)]
pub struct RegisterOptions {
    delay: Option<Duration>,
    dedicated: Option<LeaseOptions>,
    takeover: bool,
}

impl RegisterOptions {
    /// Default options: the registry's delay and its shared lease.
    pub fn new() -> Self {
        RegisterOptions::default()
    }

    /// Waits this long before the first write (Pulse's `delay`), overriding the registry's.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Gives this registration a lease of its own, with its own TTL and heartbeat, instead of the
    /// registry's shared lease.
    pub fn dedicated_lease(mut self, lease: LeaseOptions) -> Self {
        self.dedicated = Some(lease);
        self
    }

    /// Whether the first write may replace the same instance id held by another live owner.
    ///
    /// By default registering an id that another process's live lease holds is refused with
    /// [`ErrorKind::Conflict`] (unless the stored value is byte for byte the one being registered:
    /// that is the same instance restarted before its old lease ran out, and it is taken over).
    /// With `takeover`, the first write replaces it; the other owner's handle then reports
    /// [`RegistrationState::Conflict`] and does not write the id back. Only the first write takes
    /// over: after that, whoever holds the id keeps it, so two processes never fight over it.
    pub fn takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }
}

/// Counters of what a registry did, for tests, metrics and the bench.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Where the counters are also recorded (the `metrics` facade).
    pub(crate) tel: Telemetry,
    pub(crate) grants: AtomicU64,
    pub(crate) keep_alives: AtomicU64,
    pub(crate) puts: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) revokes: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) repairs: AtomicU64,
    pub(crate) conflicts: AtomicU64,
}

/// A copy of [`RegistryStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryCounts {
    /// Leases granted.
    pub grants: u64,
    /// Keep-alives sent.
    pub keep_alives: u64,
    /// Instance documents written.
    pub puts: u64,
    /// Instance keys deleted.
    pub deletes: u64,
    /// Leases revoked.
    pub revokes: u64,
    /// Times a lease was declared lost.
    pub lost: u64,
    /// Times registrations were written again under a new lease after a loss.
    pub recoveries: u64,
    /// Writes the backend refused for good (a value too large, a key not allowed): each marks
    /// its own registration only.
    pub refused: u64,
    /// Registrations found deleted or overwritten by someone else while their lease lived, and
    /// written again.
    pub repairs: u64,
    /// Times a registration found its instance id held by another live owner.
    pub conflicts: u64,
}

impl RegistryStats {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one in `c` and in the metric `name`.
    pub(crate) fn record(&self, c: &AtomicU64, name: &'static str) {
        Self::bump(c);
        self.tel.count(name);
    }

    /// The current counts.
    pub fn counts(&self) -> RegistryCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RegistryCounts {
            grants: l(&self.grants),
            keep_alives: l(&self.keep_alives),
            puts: l(&self.puts),
            deletes: l(&self.deletes),
            revokes: l(&self.revokes),
            lost: l(&self.lost),
            recoveries: l(&self.recoveries),
            refused: l(&self.refused),
            repairs: l(&self.repairs),
            conflicts: l(&self.conflicts),
        }
    }
}

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
    pub fn write_concurrency(mut self, n: usize) -> Self {
        self.write_concurrency = n;
        self
    }

    /// Feeds discoveries into an existing directory instead of a new one.
    pub fn directory(mut self, directory: Directory) -> Self {
        self.directory = Some(directory);
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
    shared: Mutex<Option<mpsc::UnboundedSender<Cmd>>>,
    /// Every keeper this registry started (the shared one and those of dedicated leases), for
    /// [`Registry::shutdown`].
    keepers: Mutex<Vec<mpsc::UnboundedSender<Cmd>>>,
    stats: Arc<RegistryStats>,
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
    pub async fn register_with(
        &self,
        instance: Instance,
        opts: RegisterOptions,
    ) -> Result<Registration> {
        self.start_registration(instance, &opts)?.finish().await
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
    /// ([`RegistryBuilder::write_concurrency`] in flight), each with its own conditional write on
    /// the one shared lease: a registration that fails (an invalid instance, an id another live
    /// owner holds, a value the backend refuses) fails alone, and the others are registered.
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
                self.spawn_keeper(lease)
            }
            None => self.shared_keeper(),
        };
        let key = self.inner.layout.key(&instance.service, &instance.id);
        let (state_tx, state_rx) = StateTx::new(
            RegistrationState::Registering { last_error: None },
            self.inner.stats.tel.clone(),
            &instance.service,
            &instance.id,
        );
        let value = instance.encode();
        let delay = opts.delay.unwrap_or(self.inner.delay);
        let takeover = opts.takeover;
        let token = next_token();
        let cancelled = Arc::new(AtomicBool::new(false));
        let handle = Registration {
            key: key.clone(),
            token,
            cancelled: cancelled.clone(),
            instance: Mutex::new(instance),
            keeper: keeper.clone(),
            state: state_rx,
            live: true,
        };
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
                    state: state_tx,
                    done: None,
                });
            });
            Ok(Started { handle, done: None })
        }
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
        crate::instance::validate_service(service)?;
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

    fn shared_keeper(&self) -> mpsc::UnboundedSender<Cmd> {
        let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = shared.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let tx = self.spawn_keeper(self.inner.lease);
        *shared = Some(tx.clone());
        tx
    }

    fn spawn_keeper(&self, lease: LeaseOptions) -> mpsc::UnboundedSender<Cmd> {
        let (tx, rx) = mpsc::unbounded_channel();
        let keeper = Keeper::new(
            self.inner.backend.clone(),
            lease,
            self.inner.op_timeout,
            self.inner.write_concurrency,
            self.inner.stats.clone(),
        );
        let span = tracing::info_span!("keeper", namespace = self.inner.layout.namespace());
        tokio::spawn(tracing::Instrument::instrument(
            keeper.run(rx, self.inner.halt.subscribe()),
            span,
        ));
        let mut keepers = self.inner.keepers.lock().unwrap_or_else(|p| p.into_inner());
        keepers.retain(|k| !k.is_closed());
        keepers.push(tx.clone());
        tx
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

pub(crate) fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the registry's lease keeper has stopped")
}

fn send(tx: &mpsc::UnboundedSender<Cmd>, cmd: Cmd) -> Result<()> {
    tx.send(cmd).map_err(|_| closed())
}

/// A live registration. Dropping it deregisters in the background; use
/// [`deregister`](Self::deregister) or [`drain`](Self::drain) to wait for it.
pub struct Registration {
    key: String,
    /// This registration's identity at its keeper: commands act on a key only while this handle
    /// owns it there (a rejected duplicate of the same key owns nothing).
    token: u64,
    /// Set when the handle is deregistered or dropped; a delayed first write that has not been
    /// applied yet is then never applied.
    cancelled: Arc<AtomicBool>,
    instance: Mutex<Instance>,
    keeper: mpsc::UnboundedSender<Cmd>,
    state: watch::Receiver<RegistrationState>,
    live: bool,
}

/// A process-wide unique registration identity.
fn next_token() -> u64 {
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
        if let Err(e) = &result {
            if !e.is_temporary() {
                // Refused for good (too large, not allowed): the registration keeps its last
                // written value, and so does the handle.
                *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = previous;
            }
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
        done_rx.await.map_err(|_| closed())?
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

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::{DiscoveryOptions, ProbeOptions, Scope};
    use registry_core::backend::{Capabilities, CondOutcome, Condition};
    use registry_core::config::MAX_DURATION;
    use registry_core::lease::Lease;
    use registry_core::watch::{KeyValue, Listing, WatchStream};

    /// A backend that declares `caps` and answers nothing: enough for option validation, which
    /// must happen before any call.
    #[derive(Debug)]
    struct Unreachable(Capabilities);

    fn down<T>() -> Result<T> {
        Err(Error::unavailable("stub backend"))
    }

    #[async_trait]
    impl Backend for Unreachable {
        fn capabilities(&self) -> Capabilities {
            self.0.clone()
        }
        async fn grant(&self, _: Duration) -> Result<Lease> {
            down()
        }
        async fn keep_alive(&self, _: &LeaseId) -> Result<Duration> {
            down()
        }
        async fn revoke(&self, _: &LeaseId) -> Result<()> {
            down()
        }
        async fn put(&self, _: &str, _: Bytes, _: Option<&LeaseId>) -> Result<u64> {
            down()
        }
        async fn delete(&self, _: &str) -> Result<Option<u64>> {
            down()
        }
        async fn put_if(
            &self,
            _: &str,
            _: Bytes,
            _: Option<&LeaseId>,
            _: Condition,
        ) -> Result<CondOutcome> {
            down()
        }
        async fn delete_if(&self, _: &str, _: Condition) -> Result<CondOutcome> {
            down()
        }
        async fn get(&self, _: &str) -> Result<Option<KeyValue>> {
            down()
        }
        async fn list(&self, _: &str) -> Result<Listing> {
            down()
        }
        async fn watch(&self, _: &str, _: u64) -> Result<WatchStream> {
            down()
        }
    }

    /// A backend declaring no upper TTL bound, as `MemoryBuilder::capabilities` allows.
    fn unbounded() -> Arc<dyn Backend> {
        Arc::new(Unreachable(
            Capabilities::default().with_max_ttl(Duration::MAX),
        ))
    }

    fn invalid<T: fmt::Debug>(r: Result<T>) -> Error {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        e
    }

    /// Before the check, a TTL of `Duration::MAX` on a backend declaring no maximum built fine and
    /// panicked later in `last_ok + ttl` (or in the backend's own deadline arithmetic).
    #[test]
    fn registry_refuses_durations_whose_deadlines_would_overflow() {
        let huge = Duration::MAX;
        let e = invalid(Registry::builder(unbounded()).ttl(huge).build());
        assert!(e.message().contains("too large"), "{e}");
        invalid(
            Registry::builder(unbounded())
                .ttl(MAX_DURATION + Duration::from_secs(1))
                .heartbeat(Duration::from_secs(5))
                .build(),
        );
        invalid(Registry::builder(unbounded()).delay(huge).build());
        invalid(Registry::builder(unbounded()).op_timeout(huge).build());
        let e = invalid(
            Registry::builder(unbounded())
                .op_timeout(Duration::ZERO)
                .build(),
        );
        assert!(e.message().contains("operation timeout"), "{e}");
        // The largest accepted values still build.
        assert!(
            Registry::builder(unbounded())
                .ttl(MAX_DURATION)
                .heartbeat(MAX_DURATION / 2)
                .delay(MAX_DURATION)
                .op_timeout(MAX_DURATION)
                .build()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn dedicated_leases_and_delays_are_checked_per_registration() {
        let registry = Registry::builder(unbounded()).build().unwrap();
        let inst = || Instance::new("web", "a").addr("x:1");
        let huge = LeaseOptions {
            ttl: Duration::MAX,
            heartbeat: Duration::from_secs(1),
        };
        invalid(
            registry
                .register_with(inst(), RegisterOptions::new().dedicated_lease(huge))
                .await,
        );
        invalid(
            registry
                .register_with(inst(), RegisterOptions::new().delay(Duration::MAX))
                .await,
        );
    }

    /// A zero probe interval panicked in `tokio::time::interval` (in the probe task) and a zero
    /// poll interval listed in a busy loop; both are refused when the discovery starts.
    #[tokio::test]
    async fn discovery_refuses_zero_and_huge_intervals() {
        let registry = Registry::builder(unbounded()).build().unwrap();
        let scope = || Scope::Service("web".into());
        for (opts, what) in [
            (
                DiscoveryOptions::new().poll(Duration::ZERO),
                "poll interval",
            ),
            (DiscoveryOptions::new().poll(Duration::MAX), "poll interval"),
            (
                DiscoveryOptions::new().probe(ProbeOptions::tcp(Duration::ZERO)),
                "probe interval",
            ),
            (
                DiscoveryOptions::new().probe(ProbeOptions::tcp(Duration::MAX)),
                "probe interval",
            ),
            (
                DiscoveryOptions::new().op_timeout(Duration::ZERO),
                "operation timeout",
            ),
            (
                DiscoveryOptions::new().backoff(Duration::MAX, Duration::MAX),
                "backoff",
            ),
        ] {
            let e = invalid(registry.discover_with(scope(), opts).await);
            assert!(e.message().contains(what), "{what}: {e}");
        }
    }
}
