//! [`BalancedChannel`]: calls spread over a service's instances by their weights, skipping those
//! that fail.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ::tonic::body::Body;
use ::tonic::{Code, Status};
use bytes::Bytes;
use registry_engine::{Directory, Instance, Instances, Selection};
use tokio::time::Instant;
use tower::Service;

use super::outlier::{Outcome, OutlierPolicy, Outliers};
use super::{BoxError, DEFAULT_ATTEMPT_TIMEOUT, EndpointFn, LazyChannel};

/// A tonic transport (a `tower` [`Service`] over HTTP requests) that spreads calls over a
/// service's online instances **in proportion to their weights**, following the directory, and
/// **skips instances whose calls fail** until they answer again. From [`Channels::balanced`](super::Channels::balanced);
/// cheap to clone (clones share the instances' channels and their outlier state).
///
/// - **Weights**: earliest-deadline-first weighted round robin (as gRPC's and Envoy's weighted
///   balancers): an instance of weight 300 gets three calls for each one an instance of weight
///   100 gets, evenly interleaved; O(log n) a call.
/// - **Following the directory**: an instance that registers gets calls from the next call on, one
///   that leaves, goes offline or is hidden by a probe gets none, one whose details change is
///   reconnected. While the service has no instance, a call waits for one (up to the per-attempt
///   timeout).
/// - **Outliers** ([`outliers`](Self::outliers), default [`OutlierPolicy::default`]): an instance
///   that refuses a connection or gives no answer head within the per-attempt timeout is ejected
///   for 1 s, one whose calls fail otherwise (connection lost, `UNAVAILABLE`) 3 times in a row
///   too; then it is tried again: an answer brings it back, another failure ejects it for twice as
///   long, up to 30 s. If every instance is ejected, calls go to them anyway.
/// - **Per-attempt timeout** ([`timeout`](Self::timeout), default [`DEFAULT_ATTEMPT_TIMEOUT`]):
///   how long a call may wait for its response head; then it fails with `DEADLINE_EXCEEDED` and
///   counts as a failure of its instance. A call is never sent twice: a balanced call that fails
///   is the caller's to retry.
/// - Streams are passed through unbuffered: any kind of call (unary, streaming either way).
#[derive(Clone)]
pub struct BalancedChannel {
    inner: Arc<Inner>,
    timeout: Option<Duration>,
    outliers: Outliers,
}

struct Inner {
    directory: Directory,
    service: String,
    selection: Option<Selection>,
    endpoint: EndpointFn,
    sched: Mutex<Sched>,
}

/// The weighted round robin's state over the instances last seen.
#[derive(Default)]
struct Sched {
    instances: Option<Instances>,
    /// (next deadline, index in `instances`): the smallest deadline is picked next.
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    /// Each instance's step: 2^32 / weight.
    steps: Vec<u64>,
    channels: HashMap<String, (Arc<Instance>, LazyChannel)>,
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("service", &self.inner.service)
            .field("timeout", &self.timeout)
            .field("outliers", &self.outliers.policy())
            .finish()
    }
}

impl BalancedChannel {
    pub(super) fn new(
        directory: Directory,
        service: String,
        selection: Option<Selection>,
        endpoint: EndpointFn,
    ) -> BalancedChannel {
        BalancedChannel {
            inner: Arc::new(Inner {
                directory,
                service,
                selection,
                endpoint,
                sched: Mutex::new(Sched::default()),
            }),
            timeout: Some(DEFAULT_ATTEMPT_TIMEOUT),
            outliers: Outliers::new(OutlierPolicy::default()),
        }
    }

    /// How long a call may wait for an instance and its response head (default
    /// [`DEFAULT_ATTEMPT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No per-attempt timeout: a call waits as long as its instance takes (put a deadline on
    /// the calls instead, or a hung instance holds them).
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// When instances are ejected (see [`OutlierPolicy`]; [`OutlierPolicy::off`] turns it off).
    pub fn outliers(mut self, policy: OutlierPolicy) -> Self {
        self.outliers = Outliers::new(policy);
        self
    }

    /// How many instance channels are held (one per instance called and still online).
    pub fn channel_count(&self) -> usize {
        self.inner.lock().channels.len()
    }

    /// Whether the instance `id` is ejected now.
    pub fn is_ejected(&self, id: &str) -> bool {
        self.outliers
            .is_ejected(id, None, std::time::Instant::now())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Instances {
        match &self.selection {
            Some(sel) => sel.get(),
            None => self.directory.get(&self.service),
        }
    }

    /// The next instance and its channel, or `None` with no instance.
    fn pick(&self, outliers: &Outliers) -> Option<(Arc<Instance>, LazyChannel)> {
        let current = self.current();
        let mut s = self.lock();
        if !s
            .instances
            .as_ref()
            .is_some_and(|i| Instances::ptr_eq(i, &current))
        {
            s.rebuild(current, outliers);
        }
        let instances = s.instances.clone()?;
        let n = s.heap.len();
        let now = std::time::Instant::now();
        let mut first = None;
        let mut chosen = None;
        for _ in 0..n {
            let Reverse((deadline, i)) = s.heap.pop()?;
            let next = deadline.saturating_add(s.steps[i]);
            s.heap.push(Reverse((next, i)));
            if next > 1 << 62 {
                s.rebase();
            }
            first.get_or_insert(i);
            if !outliers.is_ejected(&instances[i].id, Some(addr_of(&instances[i])), now) {
                chosen = Some(i);
                break;
            }
        }
        // Every instance ejected: better one of them than no call at all.
        let inst = instances[chosen.or(first)?].clone();
        // The instance's channel, made again when its details changed.
        let channel = match s.channels.get(&inst.id) {
            Some((held, channel)) if *held == inst => channel.clone(),
            _ => {
                let channel = super::lazy_channel(&self.endpoint, &inst);
                s.channels
                    .insert(inst.id.clone(), (inst.clone(), channel.clone()));
                channel
            }
        };
        Some((inst, channel))
    }

    /// An instance, waiting for one until `deadline` (for ever without).
    async fn pick_or_wait(
        &self,
        outliers: &Outliers,
        deadline: Option<Instant>,
    ) -> Result<(Arc<Instance>, LazyChannel), Status> {
        let service = self
            .selection
            .as_ref()
            .map_or(self.service.as_str(), |s| s.service());
        let mut changes = self.directory.subscribe(service);
        loop {
            changes.borrow_and_update();
            if let Some(picked) = self.pick(outliers) {
                return Ok(picked);
            }
            let changed = changes.changed();
            let ok = match deadline {
                Some(d) => tokio::time::timeout_at(d, changed)
                    .await
                    .is_ok_and(|r| r.is_ok()),
                None => changed.await.is_ok(),
            };
            if !ok {
                return Err(Status::unavailable(format!(
                    "no online instance of service {}",
                    self.service
                )));
            }
        }
    }
}

impl Sched {
    fn rebuild(&mut self, current: Instances, outliers: &Outliers) {
        self.heap.clear();
        self.steps = current
            .iter()
            .map(|i| (1u64 << 32) / u64::from(i.weight.max(1)))
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            self.heap.push(Reverse((*step, i)));
        }
        let live: std::collections::HashSet<&str> = current.iter().map(|i| i.id.as_str()).collect();
        self.channels.retain(|id, _| live.contains(id.as_str()));
        outliers.retain(|id| live.contains(id));
        self.instances = Some(current);
    }

    /// Keeps deadlines small: subtracts the smallest from all.
    fn rebase(&mut self) {
        let min = self.heap.peek().map_or(0, |Reverse((d, _))| *d);
        let entries: Vec<_> = self.heap.drain().collect();
        self.heap = entries
            .into_iter()
            .map(|Reverse((d, i))| Reverse((d - min, i)))
            .collect();
    }
}

/// The address outlier states are kept for: the instance's first.
pub(super) fn addr_of(inst: &Instance) -> &str {
    inst.addrs.first().map_or("", String::as_str)
}

/// What a response says of its instance: `UNAVAILABLE` in its head is a failure.
pub(super) fn outcome_of(resp: &http::Response<Body>) -> Outcome {
    match Status::from_header_map(resp.headers()) {
        Some(s) if s.code() == Code::Unavailable => Outcome::Failed,
        _ => Outcome::Answered,
    }
}

impl<B> Service<http::Request<B>> for BalancedChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let outliers = self.outliers.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let deadline = timeout.map(|t| Instant::now() + t);
            let (head, body) = request.into_parts();
            // The body stays here until an attempt's connection reads it: a call whose
            // connection could not be made can go to another instance with it, unsent.
            let slot: BodySlot<B> = Arc::new(Mutex::new(Some(Box::pin(body))));
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (inst, channel) = inner.pick_or_wait(&outliers, deadline).await?;
                let mut channel = match channel {
                    Ok(ch) => ch,
                    Err(e) => {
                        outliers.record(&inst.id, addr_of(&inst), Outcome::Down);
                        if attempt < MAX_UNSENT_ATTEMPTS {
                            continue;
                        }
                        return Err(Status::unavailable(format!(
                            "no endpoint for instance {}: {e}",
                            inst.id
                        )));
                    }
                };
                let mut request = http::Request::new(Body::new(LazyBody {
                    slot: slot.clone(),
                    body: None,
                }));
                *request.method_mut() = head.method.clone();
                *request.uri_mut() = head.uri.clone();
                *request.version_mut() = head.version;
                *request.headers_mut() = head.headers.clone();
                *request.extensions_mut() = head.extensions.clone();
                let call = async move {
                    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                    channel.call(request).await
                };
                let result = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, call).await {
                        Ok(r) => r,
                        Err(_) => {
                            outliers.record(&inst.id, addr_of(&inst), Outcome::Down);
                            return Err(Status::deadline_exceeded(format!(
                                "instance {} did not answer within the per-attempt timeout",
                                inst.id
                            )));
                        }
                    },
                    None => call.await,
                };
                match result {
                    Ok(resp) => {
                        outliers.record(&inst.id, addr_of(&inst), outcome_of(&resp));
                        return Ok(resp);
                    }
                    Err(e) => {
                        let e: BoxError = e.into();
                        let not_sent = super::is_not_sent(&*e);
                        outliers.record(
                            &inst.id,
                            addr_of(&inst),
                            if not_sent {
                                Outcome::Down
                            } else {
                                Outcome::Failed
                            },
                        );
                        let unread = lock(&slot).is_some();
                        if not_sent && unread && attempt < MAX_UNSENT_ATTEMPTS {
                            tracing::debug!(service = %inner.service, id = %inst.id, "tonic: connection refused; the call goes to another instance");
                            continue;
                        }
                        return Err(Status::from_error(e));
                    }
                }
            }
        })
    }
}

/// How many instances a balanced call may try when connections are refused (the call is sent to
/// one of them only).
const MAX_UNSENT_ATTEMPTS: usize = 3;

type BodySlot<B> = Arc<Mutex<Option<Pin<Box<B>>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request body taken from its slot when the connection first reads it: until then the call
/// can be handed to another instance (an attempt whose connection was refused never read it).
struct LazyBody<B> {
    slot: BodySlot<B>,
    body: Option<Pin<Box<B>>>,
}

impl<B> http_body::Body for LazyBody<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.body.is_none() {
            let taken = lock(&self.slot).take();
            match taken {
                Some(b) => self.body = Some(b),
                None => return Poll::Ready(Some(Err("the request body was already sent".into()))),
            }
        }
        let body = self.body.as_mut().expect("taken above");
        body.as_mut().poll_frame(cx).map_err(Into::into)
    }
}
