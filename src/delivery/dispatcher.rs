//! The dispatcher: runs due deliveries from the store until each is delivered, failed, dead, or
//! waiting (paused destination, open breaker, a retry's due time).
//!
//! **Memory is bounded by the work in flight, never by the backlog.** A delivery lives in memory
//! (with its body) only while a task attempts it, and a task exists only once it holds an attempt
//! slot: one permit of `delivery.max_in_flight` and one of its destination's `max_in_flight`, taken
//! *before* the task is spawned. Everything else waits in the store: a retry is recorded with its
//! due time and the task ends; an event accepted while every slot is busy, or while its destination
//! is paused or its breaker open, is simply left there. The poller then reads a bounded window of
//! due ids (at most the free slots, skipping destinations that cannot take work now) and loads the
//! bodies of just those. When a poll could not take everything that is due, finished attempts wake
//! it, so a backlog drains as fast as the destinations allow.
//!
//! One exception keeps a saturated destination off the store's read path: an event accepted while
//! its destination's own slots are all taken (so its tasks are running) is handed over to them in
//! memory, claimed, and a task takes it when its attempt ends. At most `delivery.max_in_flight`
//! deliveries wait so in all, so memory stays within twice the attempts in flight. (Sending them
//! through the store instead cost 40% more CPU per event at full load: a poll per delivery.)
//!
//! Newly accepted deliveries are handed over directly after their commit ([`Dispatcher::submit`]);
//! the poller picks up everything else: deliveries recovered after a restart (what was in flight
//! when the process died is simply still pending: at-least-once), retries, replays, and work held
//! back by a limit, a pause or a breaker. A delivery is "claimed" while a task owns it, so it is
//! never sent twice at once.
//!
//! A delivery whose destination is no longer in the config is failed with the reason
//! `destination "x" is not in the current config` (kept for replay) whatever state it waited in: a
//! pause, an open breaker or a rate limit of a destination that is gone holds nothing back.
//!
//! Limits: `delivery.max_pending` bounds pending deliveries (ingress answers 503 beyond it rather
//! than accept what it cannot hold), `delivery.max_in_flight` bounds attempts (and so deliveries
//! in memory) overall and each destination's `max_in_flight` bounds attempts per destination.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::breaker::{Breaker, BreakerState};
use super::client::AttemptReport;
use super::retry::AttemptOutcome;
use super::{Destination, StepRules, build_request};
use crate::activity::{Activity, TailItem};
use crate::clock::Clock;
use crate::store::{
    AttemptRecord, DeliveryId, DestinationName, DueDelivery, Inspect, Queue, Settle, StepDecision, Store, WaitingStep,
};
use crate::telemetry::{self, EventTrace, TRACEPARENT};

/// How often keys of ordered destinations left without a head are looked for (see
/// [`Dispatcher::sweep_stalled`]); also once at start.
pub const STALL_SWEEP: Duration = Duration::from_secs(10);

/// Shortest pause between two polls.
const MIN_POLL_GAP: Duration = Duration::from_millis(50);

/// How often the poller looks for due work it was not told about (replays from another process,
/// resumed destinations). Newly accepted events do not wait for it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How an attempt is carried out. [`HttpTransport`] in production; retry-timing tests under
/// `tokio::time::pause()` use a scripted one, since paused time and real sockets do not mix.
pub trait Transport: Send + Sync + 'static {
    fn attempt(&self, destination: &Destination, delivery: &DueDelivery) -> impl Future<Output = AttemptReport> + Send;
}

/// Sends each attempt with the destination's own pooled client.
pub struct HttpTransport;

impl Transport for HttpTransport {
    async fn attempt(&self, dest: &Destination, d: &DueDelivery) -> AttemptReport {
        // a templated URL's host has its own pool; the egress guard checks it at every attempt
        let target = dest.target(d).and_then(|uri| Ok((dest.client_for(&uri)?, uri)));
        match target {
            Ok((client, uri)) => {
                let mut request = build_request(dest, d, uri, SystemTime::now());
                // the delivery span as the destination's parent (not signed: no scheme signs headers
                // other than its own); without an exporter a sender's traceparent goes on as it came
                if let Some(traceparent) = telemetry::traceparent() {
                    request.headers_mut().insert(TRACEPARENT, traceparent);
                }
                client.send(request, dest.timeout).await
            }
            Err(reason) => AttemptReport::refused(reason),
        }
    }
}

/// The queue is full: the event must not be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("delivery queue is full ({pending} pending, limit {limit})")]
pub struct QueueFull {
    pub pending: usize,
    pub limit: usize,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatcherStats {
    pub pending: usize,
    pub attempts: u64,
    pub delivered: u64,
    pub retries: u64,
    /// Not retryable (kept as failed).
    pub failed: u64,
    /// Retry policy exhausted (dead letters).
    pub dead: u64,
}

pub struct Dispatcher<T: Transport = HttpTransport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Dispatcher<T> {
    fn clone(&self) -> Self {
        Dispatcher { inner: self.inner.clone() }
    }
}

struct Inner<T> {
    store: Store,
    /// The store's clock: due times are compared with it.
    clock: Clock,
    transport: T,
    destinations: ArcSwap<HashMap<Arc<str>, Arc<Destination>>>,
    /// The routes' later steps (`then:`), replaced on reload.
    steps: ArcSwap<StepRules>,
    /// `delivery.max_in_flight`: a task holds one permit from before it is spawned to its end.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_pending: AtomicUsize,
    pending: AtomicUsize,
    /// When the poller last read the paused destinations and the pending count from the store.
    counted_at: Mutex<Option<Instant>>,
    claims: Arc<Mutex<Claims>>,
    /// Set at shutdown: no new attempt starts.
    stopping: AtomicBool,
    paused: Mutex<HashSet<DestinationName>>,
    /// Bumped (under `paused`'s lock) by every change of `paused` made in this process (an
    /// operator, another instance's signal, a 410): a poll's read of the store's pauses that began
    /// before such a change is older than it and is not applied.
    paused_changes: AtomicU64,
    breakers: Mutex<HashMap<Arc<str>, Breaker>>,
    wake: Notify,
    /// Due work was left in the store for want of a slot: a finished attempt wakes the poller.
    backlog: AtomicBool,
    /// Due ids (no bodies) the last poll could not start for want of a slot, by destination, with
    /// when they were read: a task that finishes takes the next one of its destination, keeping its
    /// slot, so a backlog drains without a poll per delivery. At most `claimed + max_in_flight`.
    ready: Mutex<Ready>,
    handed: Mutex<Handed>,
    /// Instances sharing the store that are alive, and this one's rank among them by id: each
    /// destination's `max_in_flight` and `rate_limit` are shared among them.
    share: Mutex<(usize, usize)>,
    /// Batched deliveries accepted per destination since its batches were last formed.
    awaiting: Mutex<batches::Awaiting>,
    /// Batches a task owns (attempting one).
    batch_claims: Mutex<HashSet<i64>>,
    /// The first destinations were set.
    started: AtomicBool,
    /// Attempts running now (shutdown waits for them).
    attempting: AtomicUsize,
    idle: Notify,
    attempts: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    /// Recent attempts and the live tail, for the console.
    activity: Arc<Activity>,
}

/// How long a released claim is remembered: longer than any gap between a commit and the fast
/// path's hand-over, or between a poll's read and its claims.
const RELEASE_MEMORY: Duration = Duration::from_secs(10);

/// Why no attempt slot could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSlot {
    /// Stopping, or the destination is paused or its breaker open.
    Held,
    /// Every `delivery.max_in_flight` permit is taken.
    Full,
    /// Every permit of the destination's own `max_in_flight` is taken.
    DestinationFull,
}

/// Deliveries the fast path handed over in memory, each claimed, for a destination whose own slots
/// were all taken: a task of that destination takes them when its attempt ends. At most
/// `delivery.max_in_flight` in all, so memory stays within twice the attempts in flight; past that
/// a delivery waits in the store like any other.
#[derive(Default)]
struct Handed {
    by_destination: HashMap<Arc<str>, std::collections::VecDeque<DueDelivery>>,
    count: usize,
}

/// Due ids a poll could not start, by destination, and when it read them.
struct Ready {
    /// Per destination, the ids and when the poll that read them began.
    by_destination: HashMap<Arc<str>, (std::collections::VecDeque<DeliveryId>, Instant)>,
}

/// An attempt slot: a permit of `delivery.max_in_flight` and, for a destination in the config, one
/// of its own `max_in_flight`. Taken before a task is spawned, given back when it ends.
struct Slot {
    _global: tokio::sync::OwnedSemaphorePermit,
    /// The destination whose permit this slot holds (`None`: it is not in the config).
    dest: Option<Arc<Destination>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(d) = &self.dest {
            d.limit.give_back();
        }
    }
}

impl<T> Inner<T> {
    /// An attempt slot for a delivery to `destination`, if one may start now: not stopping, the
    /// destination not paused and its breaker letting attempts through, a permit free overall
    /// and for the destination. A destination that is not in the config needs only the overall
    /// permit (its deliveries are failed, not sent).
    fn slot_for(&self, destination: &str) -> Result<Slot, NoSlot> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(NoSlot::Held);
        }
        let dest = self.destinations.load().get(destination).cloned();
        if dest.is_some() && self.held(destination) {
            return Err(NoSlot::Held);
        }
        let global = self.in_flight.clone().try_acquire_owned().map_err(|_| NoSlot::Full)?;
        if let Some(dest) = &dest
            && !dest.limit.try_take()
        {
            return Err(NoSlot::DestinationFull);
        }
        Ok(Slot { _global: global, dest })
    }

    /// Whether this instance's circuit breaker for `destination` holds its deliveries back now.
    fn breaker_open(&self, destination: &str) -> bool {
        self.breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(destination)
            .is_some_and(|b| !b.would_allow(Instant::now()))
    }

    /// Whether a destination's deliveries wait for now: it is paused, or its breaker is open.
    fn held(&self, destination: &str) -> bool {
        self.paused.lock().unwrap_or_else(|p| p.into_inner()).contains(destination)
            || self
                .breakers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(destination)
                .is_some_and(|b| !b.would_allow(Instant::now()))
    }

    /// Whether attempts to `dest` may go on: not stopping, still this config's destination, not
    /// held.
    fn may_continue(&self, dest: &Arc<Destination>) -> bool {
        !self.stopping.load(Ordering::Acquire)
            && self.destinations.load().get(&dest.name).is_some_and(|d| Arc::ptr_eq(d, dest))
            && !self.held(&dest.name)
    }

    /// The next delivery handed over in memory for `slot`'s destination, if attempts to it may go
    /// on; if they may not, every delivery waiting there goes back to the store (claims released).
    /// Called with the hand-over lock held, so that a submit either sees this slot's permit free
    /// or this task sees its delivery.
    fn take_handed(&self, handed: &mut Handed, slot: &Slot) -> Option<DueDelivery> {
        let dest = slot.dest.as_ref()?;
        let queue = handed.by_destination.get_mut(&dest.name)?;
        if self.may_continue(dest) {
            let d = queue.pop_front();
            if queue.is_empty() {
                handed.by_destination.remove(&dest.name);
            }
            handed.count -= usize::from(d.is_some());
            return d;
        }
        let queue = handed.by_destination.remove(&dest.name).unwrap_or_default();
        handed.count -= queue.len();
        let mut leased = Vec::new();
        for d in queue {
            if d.lease_until.is_some() {
                leased.push(d.id); // its claim goes once its lease has ended
            } else {
                self.release(d.id, false);
            }
        }
        self.give_back(leased);
        self.backlog.store(true, Ordering::Release);
        None
    }

    /// Gives `slot` back, unless a delivery was handed over for its destination meanwhile: then
    /// that delivery and the slot.
    fn end_slot(&self, slot: Slot) -> Option<(DueDelivery, Slot)> {
        let mut handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        match self.take_handed(&mut handed, &slot) {
            Some(d) => Some((d, slot)),
            None => {
                // the permits go back while the lock is held (see `take_handed`)
                drop(slot);
                None
            }
        }
    }

    /// Claims delivery `id` unless a task owns it or released it after `read_at` (a row read before
    /// that task's result committed still looks pending). One lock covers the check and the claim,
    /// and a task's release, so the two cannot interleave.
    fn claim(&self, id: DeliveryId, read_at: Option<Instant>) -> bool {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        // `None` (the fast path after an accept): any release means the poller saw the committed
        // row first and a task already handled it
        let stale = match (read_at, claims.released.get(&id)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(t), Some(at)) => *at >= t,
        };
        !stale && claims.claimed.insert(id)
    }

    /// Gives up the claim on `id`; `attempted`: a task handled it, so reads from before now are stale.
    fn release(&self, id: DeliveryId, attempted: bool) {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if attempted {
            claims.released.insert(id, Instant::now());
        }
        claims.claimed.remove(&id);
    }

    /// The next due delivery of `slot`'s destination that the last poll left waiting, claimed and
    /// loaded, if the destination may still take work; else `None`. Taking the last one asks the
    /// poller to look again; with nothing waiting (no backlog) it costs one uncontended lock.
    async fn next_ready(&self, slot: &Slot) -> Option<DueDelivery> {
        let dest = slot.dest.as_ref()?;
        loop {
            let (id, read_at) = {
                let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
                // nothing was left waiting for this destination (no backlog): no poll either
                let (queue, read_at) = ready.by_destination.get_mut(&dest.name)?;
                if !self.may_continue(dest) {
                    return None;
                }
                let (id, read_at) = (queue.pop_front(), *read_at);
                if queue.is_empty() {
                    ready.by_destination.remove(&dest.name);
                    // the last waiting id is taken: more may be due, so the next finish polls
                    self.backlog.store(true, Ordering::Release);
                }
                (id, read_at)
            };
            let id = id?;
            if read_at.elapsed() >= RELEASE_MEMORY || !self.claim(id, Some(read_at)) {
                continue;
            }
            match self.store.load_pending(vec![id], self.clock.now_ms()).await {
                Ok(mut v) if !v.is_empty() => return v.pop(),
                Ok(_) => self.release(id, false), // no longer pending: someone finished it
                Err(e) => {
                    error!(error = %e, "loading a due delivery failed");
                    self.release(id, false);
                    return None;
                }
            }
        }
    }
}

impl<T> Inner<T> {
    /// Whether `dest`'s circuit breaker lets an attempt through now.
    fn admit(&self, dest: &Destination) -> bool {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.entry(dest.name.clone()).or_insert_with(|| Breaker::new(dest.breaker.clone())).allow(Instant::now())
    }

    /// Records an attempt's success or failure in `dest`'s breaker, and logs a change of state.
    fn record_in_breaker(&self, dest: &Destination, success: bool) {
        let changed = self
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&dest.name)
            .and_then(|b| b.record(Instant::now(), success));
        match changed {
            Some(BreakerState::Open { .. }) => {
                warn!(destination = %dest.name, cooldown_ms = dest.breaker.cooldown.as_millis() as u64, "circuit breaker opened; deliveries wait in the store")
            }
            Some(BreakerState::Closed) => info!(destination = %dest.name, "circuit breaker closed"),
            _ => {}
        }
    }

    /// Pauses `dest` after a `410 Gone`: in the store, then in memory (a poll in between would
    /// read the store and undo it), so a log line written after this is true when it appears: an
    /// event accepted after it waits in the store.
    async fn pause_gone(&self, dest: &Destination) {
        let name = DestinationName(dest.name.clone());
        let reason = Some("the destination answered 410 Gone".to_string());
        if let Err(e) = self.store.set_paused(&name, true, reason).await {
            error!(error = %e, "could not record the pause");
        }
        let mut set = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        self.paused_changes.fetch_add(1, Ordering::AcqRel);
        set.insert(name);
    }

    /// Counts an attempt as running and sends `request`, unless a shutdown or a pause came while
    /// its task waited for its turn (then `None`, and nothing counted). With `Some`, the caller
    /// ends the attempt with [`Inner::attempt_ended`] once its result is recorded.
    async fn send(&self, dest: &Destination, request: &DueDelivery) -> Option<AttemptReport>
    where
        T: Transport,
    {
        self.attempting.fetch_add(1, Ordering::AcqRel);
        if self.stopping.load(Ordering::Acquire)
            || self.paused.lock().unwrap_or_else(|p| p.into_inner()).contains(&*request.destination)
        {
            self.attempt_ended();
            return None;
        }
        Some(self.transport.attempt(dest, request).await)
    }

    /// An attempt counted by [`Inner::send`] ended (shutdown waits for none to run).
    fn attempt_ended(&self) {
        if self.attempting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// The new head of an ordered key whose head this task just settled, claimed and loaded, if
    /// `slot`'s destination may take it now; else the poller takes it (woken here).
    async fn take_head(&self, head: DeliveryId, slot: &Slot) -> Option<DueDelivery> {
        let asked = Instant::now();
        let takes = slot.dest.as_ref().is_some_and(|dest| self.may_continue(dest));
        if !takes || !self.claim(head, Some(asked)) {
            self.backlog.store(true, Ordering::Release);
            self.wake.notify_one();
            return None;
        }
        match self.store.load_pending(vec![head], self.clock.now_ms()).await {
            Ok(mut v) if !v.is_empty() => v.pop(),
            Ok(_) => {
                self.release(head, false);
                None
            }
            Err(e) => {
                error!(error = %e, "loading the next ordered delivery failed; the poller takes it");
                self.release(head, false);
                self.backlog.store(true, Ordering::Release);
                None
            }
        }
    }
}

impl<T: Transport> Dispatcher<T> {
    /// A dispatcher over `store`, sending to `destinations` (replace them with
    /// [`Dispatcher::set_destinations`] on reload).
    pub async fn new(
        store: Store,
        transport: T,
        destinations: &[Arc<Destination>],
        max_in_flight: usize,
        max_pending: usize,
    ) -> crate::store::Result<Self> {
        let pending = store.pending_count().await?;
        let paused = store.paused().await?.into_iter().map(|(n, _)| n).collect();
        let d = Dispatcher {
            inner: Arc::new(Inner {
                clock: store.clock(),
                store,
                transport,
                destinations: ArcSwap::from_pointee(HashMap::new()),
                steps: ArcSwap::from_pointee(HashMap::new()),
                in_flight: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                max_pending: AtomicUsize::new(max_pending),
                pending: AtomicUsize::new(pending),
                counted_at: Mutex::new(None),
                claims: Arc::new(Mutex::new(Claims::default())),
                stopping: AtomicBool::new(false),
                paused: Mutex::new(paused),
                paused_changes: AtomicU64::new(0),
                breakers: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                // whatever a previous run left pending may be due: let the first polls take it
                backlog: AtomicBool::new(pending > 0),
                ready: Mutex::new(Ready { by_destination: HashMap::new() }),
                handed: Mutex::new(Handed::default()),
                share: Mutex::new((1, 0)),
                awaiting: Mutex::new(Default::default()),
                batch_claims: Mutex::new(HashSet::new()),
                started: AtomicBool::new(false),
                attempting: AtomicUsize::new(0),
                idle: Notify::new(),
                attempts: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dead: AtomicU64::new(0),
                activity: Arc::new(Activity::default()),
            }),
        };
        d.set_destinations(destinations);
        Ok(d)
    }

    /// Deliveries look their destination up by name at each attempt, so a reload takes effect on
    /// the next attempt; a destination that disappeared fails its deliveries as "destination
    /// removed" (kept for replay), whether it was paused, its breaker open or its rate limited.
    pub fn set_destinations(&self, destinations: &[Arc<Destination>]) {
        let (instances, rank) = *self.inner.share.lock().unwrap_or_else(|p| p.into_inner());
        for d in destinations {
            share_limits(d, instances, rank);
        }
        let map: HashMap<Arc<str>, Arc<Destination>> =
            destinations.iter().map(|d| (d.name.clone(), d.clone())).collect();
        let changed = batches::batched_names(&self.inner.destinations.load()) != batches::batched_names(&map);
        self.inner.destinations.store(Arc::new(map));
        // deliveries awaiting a batch of a destination that no longer batches (or is gone) go
        // one by one; at start, whatever a previous config left awaiting
        if changed || !self.inner.started.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move { this.release_unbatched().await });
        }
        let mut breakers = self.inner.breakers.lock().unwrap_or_else(|p| p.into_inner());
        // a removed destination's breaker goes with it (a destination re-added later starts closed)
        breakers.retain(|name, _| destinations.iter().any(|d| d.name == *name));
        for d in destinations {
            // keep a breaker's state across reloads unless its settings changed
            if breakers.get(&d.name).is_none_or(|b| *b.settings() != d.breaker) {
                breakers.insert(d.name.clone(), Breaker::new(d.breaker.clone()));
            }
        }
        drop(breakers);
        // deliveries of a destination that is gone are now failed by the poller
        self.inner.backlog.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    /// The routes' later steps: a delivery that steps follow decides them, when it ends, by the
    /// rules current then.
    pub fn set_steps(&self, steps: StepRules) {
        self.inner.steps.store(Arc::new(steps));
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// What this process did lately (the console's charts, health and live tail).
    pub fn activity(&self) -> &Arc<Activity> {
        &self.inner.activity
    }

    /// Shares every destination's `max_in_flight` and `rate_limit` among `instances` live
    /// instances, this one being the `rank`th by id (from the store's heartbeats).
    pub fn set_share(&self, instances: usize, rank: usize) {
        let instances = instances.max(1);
        {
            let mut share = self.inner.share.lock().unwrap_or_else(|p| p.into_inner());
            if *share == (instances, rank) {
                return;
            }
            *share = (instances, rank);
        }
        for d in self.inner.destinations.load().values() {
            share_limits(d, instances, rank);
        }
        // a larger share may let waiting work start
        self.wake();
    }

    /// Refuses `n` more deliveries when the queue is full. Call before committing an event.
    pub fn check_capacity(&self, n: usize) -> Result<(), QueueFull> {
        let pending = self.inner.pending.load(Ordering::Acquire);
        let limit = self.inner.max_pending.load(Ordering::Relaxed);
        if n > 0 && pending.saturating_add(n) > limit { Err(QueueFull { pending, limit }) } else { Ok(()) }
    }

    /// Counts `n` deliveries just committed that are not due now (ordered ones waiting for their
    /// turn, batched ones awaiting a batch) as pending, for `delivery.max_pending`.
    pub fn waiting(&self, n: usize) {
        self.inner.pending.fetch_add(n, Ordering::AcqRel);
    }

    /// Starts committed, due deliveries now (the fast path after an accept) where a slot is free;
    /// the rest stay in the store for the poller.
    pub fn submit(&self, due: Vec<DueDelivery>) {
        self.inner.pending.fetch_add(due.len(), Ordering::AcqRel);
        self.start(due);
    }

    /// Starts pending deliveries (already counted as pending) where a slot is free; the rest stay
    /// in the store for the poller.
    fn start(&self, due: Vec<DueDelivery>) {
        let inner = &self.inner;
        // With other instances live, what this one accepted but cannot start because *it* holds
        // its destination back (its own circuit breaker is open) is given back at once: the
        // others' breakers may let it through. What waits for want of a slot keeps its lease:
        // this instance's poller takes it as slots free up, at no write (giving it back cost two
        // writes a delivery, which doubled the database's CPU per event of two saturated
        // instances); the others take it only if its lease runs out.
        let others = inner.share.lock().unwrap_or_else(|p| p.into_inner()).0 > 1;
        let mut given_back = Vec::new();
        for d in due {
            let id = d.id;
            let mut give_back = false;
            let mut handed = inner.handed.lock().unwrap_or_else(|p| p.into_inner());
            let started = match inner.slot_for(&d.destination) {
                Ok(slot) => {
                    drop(handed);
                    self.claim_and_spawn(d, slot, None)
                }
                // The destination's slots are all taken, so its tasks are running: hand this one
                // over to them in memory (bounded) rather than through a poll of the store.
                Err(NoSlot::DestinationFull) if handed.count < inner.max_in_flight && inner.claim(d.id, None) => {
                    handed.count += 1;
                    handed.by_destination.entry(d.destination.0.clone()).or_default().push_back(d);
                    true
                }
                Err(NoSlot::Held) => {
                    give_back = others && d.lease_until.is_some() && inner.breaker_open(&d.destination);
                    false
                }
                Err(_) => false,
            };
            if !started {
                inner.backlog.store(true, Ordering::Release);
                // claimed while its lease ends (one a task of this process has already is not
                // claimable: its lease stays)
                if give_back && inner.claim(id, None) {
                    given_back.push(id);
                }
            }
        }
        inner.give_back(given_back);
    }

    /// Claims `d` and starts its task with `slot`, unless a task owns it or released it after
    /// `read_at` (a row read before that task's result committed still looks pending). One lock
    /// covers the check and the claim, and the task's release, so the two cannot interleave.
    fn claim_and_spawn(&self, d: DueDelivery, slot: Slot, read_at: Option<Instant>) -> bool {
        if !self.inner.claim(d.id, read_at) {
            self.recycle(slot);
            return false;
        }
        self.spawn(d, slot);
        true
    }

    /// Starts the task of a claimed delivery.
    fn spawn(&self, d: DueDelivery, slot: Slot) {
        tokio::spawn(run(self.inner.clone(), d, slot));
    }

    /// Gives back a slot that was not used, or uses it for a delivery handed over meanwhile (a
    /// submit may have found the destination full because of this very slot).
    fn recycle(&self, slot: Slot) {
        if let Some((d, slot)) = self.inner.end_slot(slot) {
            self.spawn(d, slot);
        }
    }

    pub fn stats(&self) -> DispatcherStats {
        let i = &self.inner;
        DispatcherStats {
            pending: i.pending.load(Ordering::Acquire),
            attempts: i.attempts.load(Ordering::Relaxed),
            delivered: i.delivered.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            dead: i.dead.load(Ordering::Relaxed),
        }
    }

    /// The deliveries held in memory now (claimed: attempted, or handed over to a busy
    /// destination).
    pub fn claimed(&self) -> Vec<DeliveryId> {
        self.inner.claims.lock().unwrap_or_else(|p| p.into_inner()).claimed.iter().copied().collect()
    }

    /// Deliveries held in memory now (claimed: attempted, or handed over to a busy destination).
    #[cfg(test)]
    fn in_memory(&self) -> usize {
        self.inner.claims.lock().unwrap_or_else(|p| p.into_inner()).claimed.len()
    }

    /// Breaker state per destination.
    pub fn breaker_states(&self) -> Vec<(Arc<str>, &'static str)> {
        let b = self.inner.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = b.iter().map(|(k, b)| (k.clone(), b.state().label())).collect();
        v.sort();
        v
    }

    /// Reads the paused destinations and the pending count from the store at the next poll, now
    /// (after missing other instances' signals).
    pub fn refresh(&self) {
        *self.inner.counted_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.wake();
    }

    /// Wakes the poller now (after a replay or a resume in this process).
    pub fn wake(&self) {
        self.inner.backlog.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    /// Polls the store for due work until `shutdown` resolves; sweeps stalled ordered keys at
    /// start and every [`STALL_SWEEP`].
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next_sweep = Instant::now();
        loop {
            if Instant::now() >= next_sweep {
                self.sweep_stalled().await;
                next_sweep = Instant::now() + STALL_SWEEP;
            }
            if let Err(e) = self.poll_once().await {
                error!(error = %e, "polling the store for due deliveries failed");
            }
            let batch_closes = self.poll_batches().await;
            // Sleep until the next due time of a destination that can take work, or the next
            // batch closing by its wait, at most a poll interval (for resumed destinations,
            // closing breakers and other processes' replays); finished attempts wake it sooner
            // while a backlog waits for slots.
            let next = self.inner.store.next_due_ms(self.blocked_destinations()).await.ok().flatten();
            let next = match (next, batch_closes) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = match next {
                Some(at) if at > self.inner.clock.now_ms() => {
                    Duration::from_millis((at - self.inner.clock.now_ms()) as u64).min(POLL_INTERVAL)
                }
                _ => POLL_INTERVAL,
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait.max(MIN_POLL_GAP)) => {}
            }
        }
    }

    /// Advances the ordered keys left with no head (a process stopped between a head's settle and
    /// its key's advance): one instance at a time where several share the store. Also sends one by
    /// one what awaits a batch of a destination that no longer batches.
    pub async fn sweep_stalled(&self) {
        let store = &self.inner.store;
        match store.exclusive("ordering-sweep", store.advance_stalled()).await {
            Ok(Some(Ok(0))) | Ok(None) => {}
            Ok(Some(Ok(n))) => {
                info!(
                    keys = n,
                    "ordered keys with no head were advanced (a process stopped between a settle and its key's advance)"
                );
                self.wake();
            }
            Ok(Some(Err(e))) | Err(e) => {
                warn!(error = %e, "sweeping stalled ordered keys failed; retried at the next sweep")
            }
        }
        // a delivery replayed into a batch of a destination that no longer batches (the replay
        // does not know the config) goes one by one
        self.release_unbatched().await;
    }

    /// Destinations whose due deliveries cannot start now: paused (while in the config: the
    /// deliveries of a destination that is gone must reach the check that fails them), breaker
    /// open, or every one of its own slots taken.
    fn blocked_destinations(&self) -> Vec<DestinationName> {
        let inner = &self.inner;
        inner
            .destinations
            .load()
            .values()
            .filter(|d| inner.held(&d.name) || d.limit.available() == 0)
            .map(|d| DestinationName(d.name.clone()))
            .collect()
    }

    /// One poll: refresh paused destinations and the pending count (once a poll interval), then
    /// start due work for as many free slots as there are, loading the bodies of just those.
    pub async fn poll_once(&self) -> crate::store::Result<usize> {
        let inner = &self.inner;
        if inner.stopping.load(Ordering::Acquire) {
            return Ok(0);
        }
        // Pauses made by another process (the CLI) and the pending count, once a poll interval:
        // a backlog that drains polls far more often than that.
        let refresh =
            inner.counted_at.lock().unwrap_or_else(|p| p.into_inner()).is_none_or(|at| at.elapsed() >= POLL_INTERVAL);
        if refresh {
            let changes = inner.paused_changes.load(Ordering::Acquire);
            let paused: HashSet<DestinationName> = inner.store.paused().await?.into_iter().map(|(n, _)| n).collect();
            {
                let mut set = inner.paused.lock().unwrap_or_else(|p| p.into_inner());
                // a resume heard while this read ran must not be undone by it
                if inner.paused_changes.load(Ordering::Acquire) == changes {
                    *set = paused;
                }
            }
            inner.pending.store(inner.store.pending_count().await?, Ordering::Release);
            *inner.counted_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let free = inner.in_flight.available_permits();
        if free == 0 {
            inner.backlog.store(true, Ordering::Release);
            return Ok(0);
        }
        // Clear the flag before reading: an attempt that ends from here on sets off another poll.
        inner.backlog.store(false, Ordering::Release);
        let claimed = inner.claims.lock().unwrap_or_else(|p| p.into_inner()).claimed.len();
        // A task releases its claim right after its result committed. A row read before that
        // commit still looks pending, so ids released after this poll began are skipped.
        let poll_started = Instant::now();
        // The window: the rows tasks own (still pending in the store), one per free slot, and as
        // many again to wait (ids only) for the slots of attempts that finish.
        let window = claimed + free + inner.max_in_flight;
        let blocked = self.blocked_destinations();
        // Destinations passed over because their slots are all taken have due work this poll does
        // not read: their tasks go on with the ids an earlier poll left them (kept below), and
        // one with none left sets off the next poll as its tasks end.
        let passed_over: Vec<Arc<str>> =
            blocked.iter().filter(|name| !inner.held(name)).map(|name| name.0.clone()).collect();
        let due = inner.store.due_ids(inner.clock.now_ms(), window, blocked).await?;
        let mut full = due.len() >= window;
        let now = Instant::now();
        let candidates: Vec<(DeliveryId, DestinationName)> = {
            let mut claims = inner.claims.lock().unwrap_or_else(|p| p.into_inner());
            claims.released.retain(|_, at| now.duration_since(*at) < RELEASE_MEMORY);
            let Claims { claimed, released } = &*claims;
            due.into_iter()
                .filter(|(id, _)| !claimed.contains(id) && released.get(id).is_none_or(|at| *at < poll_started))
                .collect()
        };
        let mut slots = HashMap::with_capacity(candidates.len());
        let mut waiting: HashMap<Arc<str>, std::collections::VecDeque<DeliveryId>> = HashMap::new();
        let mut short = false;
        for (id, dest) in candidates {
            match inner.slot_for(&dest) {
                Ok(slot) => {
                    slots.insert(id, slot);
                }
                Err(_) => {
                    short = true;
                    waiting.entry(dest.0).or_default().push_back(id);
                }
            }
        }
        // what could not start waits (as ids) for the slots of finishing attempts
        {
            let mut ready = inner.ready.lock().unwrap_or_else(|p| p.into_inner());
            let mut by_destination: HashMap<Arc<str>, _> =
                waiting.into_iter().map(|(name, ids)| (name, (ids, poll_started))).collect();
            for name in passed_over {
                match ready.by_destination.remove(&name) {
                    Some(kept) => {
                        by_destination.insert(name, kept);
                    }
                    None => full = true,
                }
            }
            ready.by_destination = by_destination;
        }
        if full || short {
            inner.backlog.store(true, Ordering::Release);
        }
        if slots.is_empty() {
            return Ok(0);
        }
        let mut started = 0;
        let loaded = inner.store.load_pending(slots.keys().copied().collect(), inner.clock.now_ms()).await;
        let result = loaded.map(|rows| {
            for d in rows {
                let Some(slot) = slots.remove(&d.id) else { continue };
                if self.claim_and_spawn(d, slot, Some(poll_started)) {
                    started += 1;
                }
            }
            started
        });
        // slots of rows no longer pending (or of a failed read)
        for (_, slot) in slots {
            self.recycle(slot);
        }
        result
    }

    /// Marks a destination paused or not in this process at once (the store is the source of
    /// truth; the poller refreshes from it every second).
    pub fn set_paused(&self, destination: &DestinationName, paused: bool) {
        let mut set = self.inner.paused.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.paused_changes.fetch_add(1, Ordering::AcqRel);
        if paused {
            set.insert(destination.clone());
        } else {
            set.remove(destination);
        }
    }

    /// Stops starting attempts, then waits until none is running or `grace` has passed; returns
    /// how many still run. Everything not finished stays due in the store.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.stopping.store(true, Ordering::Release);
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.inner.attempting.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        self.inner.attempting.load(Ordering::Acquire)
    }
}

/// Sets `d`'s limits to this instance's share.
fn share_limits(d: &Destination, instances: usize, rank: usize) {
    d.limit.set_share(instances, rank);
    if let Some(rate) = &d.rate {
        rate.set_share(instances);
    }
}

impl<T> Inner<T> {
    /// Ends this instance's leases on deliveries it claimed (in memory) and gives up without
    /// attempting them, so that another instance may take them now rather than when the leases
    /// run out; then gives up the claims. In that order: were a claim given up first, this
    /// instance's poller could take the delivery back (renewing the lease) and start an attempt
    /// whose lease the release then ended under it. In the background: nothing waits for it, and
    /// a lease not ended runs out by itself.
    fn give_back(&self, ids: Vec<DeliveryId>) {
        if ids.is_empty() {
            return;
        }
        let (store, claims) = (self.store.clone(), self.claims.clone());
        tokio::spawn(async move {
            if let Err(e) = store.release(ids.clone()).await {
                warn!(error = %e, "could not end leases on deliveries given back; they run out by themselves");
            }
            let mut claims = claims.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                claims.claimed.remove(&id);
            }
        });
    }
}

/// Which deliveries tasks own, and when recently finished tasks gave theirs up.
#[derive(Default)]
struct Claims {
    claimed: HashSet<DeliveryId>,
    released: HashMap<DeliveryId, Instant>,
}

/// Owns one claimed delivery for one attempt, then, keeping its slot, the next due delivery of
/// the same destination that a poll left waiting, until there is none. Whatever comes next for a
/// delivery (a retry, a pause, a breaker) waits in the store, not in this task: memory follows the
/// attempts running, not the backlog.
async fn run<T: Transport>(inner: Arc<Inner<T>>, mut d: DueDelivery, mut slot: Slot) {
    loop {
        let (log_span, mut otel, cx) = delivery_spans(&d);
        let next = tracing::Instrument::instrument(
            telemetry::in_span(cx, attempt_once(&inner, &d, &slot, &mut otel)),
            log_span,
        )
        .await;
        // not attempted after all (paused, breaker open, stopping): no span for it
        let released = matches!(next, Next::Release);
        if released {
            otel.discard();
        } else {
            drop(otel);
        }
        if released
            && d.lease_until.is_some()
            && let Err(e) = inner.store.release(vec![d.id]).await
        {
            warn!(error = %e, "could not end the lease on a delivery given back; it runs out by itself");
        }
        // released before another claim, so a poll that read this row as pending before our
        // result committed cannot take it again
        inner.release(d.id, true);
        if matches!(next, Next::Retry) {
            // a retry due soon: let the poller see its due time
            inner.wake.notify_one();
        }
        // The later steps its settle released go now, as an accept's deliveries do (one load,
        // not a poll per step).
        if let Next::Done { released, .. } = &next
            && !released.is_empty()
        {
            start_released(&inner, released).await;
        }
        // An ordered delivery that ended lets the next of its key go: that one next, with this
        // slot (one store read, not a poll per delivery).
        let ordered_next = match next {
            Next::Done { head: Some(head), .. } => inner.take_head(head, &slot).await,
            _ => None,
        };
        // next: a fresh delivery handed over in memory, else an id a poll left waiting, else
        // give the slot back (unless one was handed over meanwhile)
        let handed = match ordered_next {
            Some(n) => Some(n),
            None => {
                let mut handed = inner.handed.lock().unwrap_or_else(|p| p.into_inner());
                inner.take_handed(&mut handed, &slot)
            }
        };
        let n = match handed {
            Some(n) => n,
            None => match inner.next_ready(&slot).await {
                Some(n) => n,
                None => match inner.end_slot(slot) {
                    Some((n, s)) => {
                        slot = s;
                        n
                    }
                    None => break,
                },
            },
        };
        d = n;
    }
    // work may be waiting for this slot
    if inner.backlog.load(Ordering::Acquire) {
        inner.wake.notify_one();
    }
}

/// The spans of one attempt of `d`: the logs' and, when exported, the trace's. Its own, not the
/// task's (a task goes on to other deliveries), and no child of the span it was started from: in
/// a trace, its parent is its event's span, rebuilt from the stored event (`telemetry`), whether
/// the attempt follows the commit at once or comes from the store after a restart.
///
/// With the context the attempt runs in: the delivery span's, or (a trace left out by
/// `sample_ratio`) its event span's, not sampled; what the request's `traceparent` names.
fn delivery_spans(d: &DueDelivery) -> (tracing::Span, telemetry::Span, Option<telemetry::SpanContext>) {
    let log = tracing::info_span!(
        parent: None,
        "delivery",
        event_id = %d.event_id,
        route = %d.route,
        destination = %d.destination,
        delivery = d.id.0,
        attempt = d.attempts + 1,
    );
    let trace = telemetry::exporting()
        .then(|| EventTrace::from_headers(&d.event_id, d.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    let mut otel = telemetry::Span::delivery(trace.as_ref());
    if otel.is_recording() {
        otel.set("event_id", &d.event_id.0);
        otel.set("route", &d.route.0);
        otel.set("destination", &d.destination.0);
        otel.set("delivery", d.id.0);
        otel.set("attempt", d.attempts + 1);
    }
    let cx = otel.context().or_else(|| trace.map(|t| t.context()));
    (log, otel, cx)
}

enum Next {
    /// Attempted and recorded; due again later (in the store).
    Retry,
    /// Finished: delivered, failed or dead; for an ordered delivery, its key's next head if it
    /// is due now (the settle advanced the key); the later steps of a chain its settle released.
    Done { head: Option<DeliveryId>, released: Vec<DeliveryId> },
    /// Not attempted (paused, breaker open, stopping) or not recorded: leave it to the poller.
    Release,
}

/// Fails `d` as "not in the current config": its destination was removed by a reload.
async fn fail_removed<T>(inner: &Inner<T>, d: &DueDelivery) -> Next {
    let reason = format!("destination \"{}\" is not in the current config", d.destination);
    let record = AttemptRecord {
        at_ms: inner.clock.now_ms(),
        status_code: None,
        latency_ms: 0,
        response: Default::default(),
        error: Some(reason.clone()),
    };
    warn!(event_id = %d.event_id, route = %d.route, destination = %d.destination, "destination removed; delivery kept as failed for replay");
    inner.failed.fetch_add(1, Ordering::Relaxed);
    finish(inner, d, record, Settle::Failed, Some(reason), &[]).await
}

async fn attempt_once<T: Transport>(
    inner: &Inner<T>,
    d: &DueDelivery,
    slot: &Slot,
    otel: &mut telemetry::Span,
) -> Next {
    // the current config's destination: a reload since the slot was taken counts
    let current = inner.destinations.load().get(d.destination.as_str()).cloned();
    let (Some(dest), Some(_)) = (current, &slot.dest) else {
        return fail_removed(inner, d).await;
    };
    if !inner.admit(&dest) {
        return Next::Release;
    }
    if let Some(rate) = &dest.rate {
        rate.wait().await;
        // a reload may have removed the destination while this attempt waited for its turn
        if !inner.destinations.load().contains_key(d.destination.as_str()) {
            return fail_removed(inner, d).await;
        }
    }
    // Another instance may take the delivery once this one's lease ends: never start an attempt
    // that could outlive it (plus the time to record the result).
    if let Some(until) = d.lease_until
        && until.saturating_duration_since(std::time::Instant::now()) < dest.timeout + crate::config::LEASE_MARGIN
    {
        match inner.store.renew(d.id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                info!(event_id = %d.event_id, destination = %dest.name, "lease on the delivery lost to another instance; not attempting it");
                return Next::Release;
            }
            Err(e) => {
                warn!(error = %e, delivery = d.id.0, "could not renew the lease on a delivery; not attempting it now");
                return Next::Release;
            }
        }
    }
    let Some(report) = inner.send(&dest, d).await else {
        return Next::Release;
    };
    inner.attempts.fetch_add(1, Ordering::Relaxed);
    crate::metrics::attempt(&dest.name, report.latency.as_secs_f64());
    let outcome = outcome_label(&report.outcome, dest.retry.delay(d.attempts + 1, None, false, 0.5).is_some());
    crate::metrics::delivery(&dest.name, outcome);
    let attempt = d.attempts + 1;
    let delivered = matches!(report.outcome, AttemptOutcome::Delivered { .. });
    inner.activity.attempt(&dest.name, report.latency, delivered, || TailItem::Delivery {
        id: d.id.0,
        event_id: d.event_id.to_string(),
        route: d.route.to_string(),
        destination: dest.name.to_string(),
        status: match outcome {
            "delivered" | "failed" | "dead" => outcome,
            _ => "pending",
        },
        attempts: attempt,
        last_status: report.outcome.status_and_error().0,
        latency_ms: report.latency.as_millis() as u64,
    });
    let latency_ms = report.latency.as_millis() as u64;
    let (status_code, error_text) = report.outcome.status_and_error();
    if otel.is_recording() {
        otel.set("outcome", outcome);
        if let Some(code) = status_code {
            otel.set("http.response.status_code", code);
        }
        if let Some(error) = &error_text {
            otel.fail(error);
        }
    }
    let record = AttemptRecord {
        at_ms: inner.clock.now_ms(),
        status_code,
        latency_ms,
        response: report.response_body.clone(),
        error: error_text.clone(),
    };
    inner.record_in_breaker(&dest, !matches!(report.outcome, AttemptOutcome::Retryable { .. }));
    let next = match report.outcome {
        AttemptOutcome::Delivered { status } => {
            info!(event_id = %d.event_id, route = %d.route, destination = %dest.name, status = status.as_u16(), attempt, latency_ms, "delivered");
            inner.delivered.fetch_add(1, Ordering::Relaxed);
            finish(inner, d, record, Settle::Delivered, None, &report.response_headers).await
        }
        AttemptOutcome::Failed { reason, .. } => {
            error!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, "delivery failed; not retryable (kept as failed)");
            inner.failed.fetch_add(1, Ordering::Relaxed);
            finish(inner, d, record, Settle::Failed, error_text, &report.response_headers).await
        }
        AttemptOutcome::Gone => {
            inner.pause_gone(&dest).await;
            error!(event_id = %d.event_id, destination = %dest.name, "destination answered 410 Gone; paused it (resume with `hookyard resume`)");
            let settled =
                inner.store.settle(d.id, record, Settle::Retry { next_at_ms: inner.clock.now_ms() }, error_text).await;
            if let Err(e) = settled {
                error!(error = %e, "could not record the attempt");
            }
            Next::Release
        }
        AttemptOutcome::Retryable { retry_after, throttled, reason, .. } => {
            match dest.retry.delay(attempt, retry_after, throttled, fastrand::f64()) {
                Some(delay) => {
                    warn!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, retry_in_ms = delay.as_millis() as u64, "delivery attempt failed; will retry");
                    inner.retries.fetch_add(1, Ordering::Relaxed);
                    let next_at_ms = inner.clock.now_ms() + delay.as_millis() as i64;
                    match inner.store.settle(d.id, record, Settle::Retry { next_at_ms }, error_text).await {
                        Ok(()) => Next::Retry,
                        Err(e) => {
                            error!(error = %e, "could not record the attempt; the delivery stays due");
                            Next::Release
                        }
                    }
                }
                None => {
                    error!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, "delivery failed; retries exhausted (dead letter)");
                    inner.dead.fetch_add(1, Ordering::Relaxed);
                    finish(inner, d, record, Settle::Dead, error_text, &report.response_headers).await
                }
            }
        }
    };
    inner.attempt_ended();
    next
}

/// The `outcome` label of the deliveries metric.
fn outcome_label(o: &AttemptOutcome, can_retry: bool) -> &'static str {
    match o {
        AttemptOutcome::Delivered { .. } => "delivered",
        AttemptOutcome::Failed { .. } => "failed",
        AttemptOutcome::Gone => "gone",
        AttemptOutcome::Retryable { .. } if can_retry => "retry",
        AttemptOutcome::Retryable { .. } => "dead",
    }
}

/// Records a final state (with the response's headers, which later steps may read).
async fn finish<T>(
    inner: &Inner<T>,
    d: &DueDelivery,
    record: AttemptRecord,
    settle: Settle,
    error: Option<String>,
    response_headers: &[(String, String)],
) -> Next {
    let settled = match &d.order_key {
        // the key moves on with the settle (one commit on SQLite)
        Some(key) => {
            let (destination, key) = (d.destination.clone(), key.clone());
            inner.store.settle_and_advance(d.id, record, settle, error, destination, key).await.map(|h| (h, Vec::new()))
        }
        // the later steps are decided with the settle (one commit)
        None if d.leads => match inner.store.steps_after(d.id).await {
            Ok(steps) => {
                let decisions: Vec<StepDecision> = steps
                    .iter()
                    .map(|s| decide_step(inner, d, s, &record, &settle, error.as_deref(), response_headers))
                    .collect();
                let outcomes: Vec<(DestinationName, &'static str)> = steps
                    .iter()
                    .zip(&decisions)
                    .filter_map(|(s, decision)| match decision {
                        StepDecision::Release { .. } => None,
                        StepDecision::Skip { .. } => Some((s.destination.clone(), "skipped")),
                        StepDecision::Fail { .. } => Some((s.destination.clone(), "failed")),
                    })
                    .collect();
                let released: Vec<DeliveryId> = decisions
                    .iter()
                    .filter_map(|decision| match decision {
                        StepDecision::Release { id, .. } => Some(*id),
                        _ => None,
                    })
                    .collect();
                let settled = inner.store.settle_steps(d.id, record, settle, error, decisions).await;
                if settled.is_ok() {
                    for (destination, outcome) in &outcomes {
                        crate::metrics::delivery(destination, outcome);
                    }
                }
                settled.map(|()| (None, released))
            }
            Err(e) => Err(e),
        },
        None => inner.store.settle(d.id, record, settle, error).await.map(|()| (None, Vec::new())),
    };
    match settled {
        Ok((head, released)) => {
            // the poller also resets the count from the store, so never wrap below zero
            let _ = inner.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
            Next::Done { head, released }
        }
        Err(e) => {
            error!(error = %e, delivery = d.id.0, "could not record the attempt; the delivery stays due");
            Next::Release
        }
    }
}

/// Starts the later steps a settle released (due now; one still pending is loaded, one another
/// process took or a reload removed is not), with slots of their own destinations; if they cannot
/// be loaded, the poller takes them.
async fn start_released<T: Transport>(inner: &Arc<Inner<T>>, ids: &[DeliveryId]) {
    match inner.store.load_pending(ids.to_vec(), inner.clock.now_ms()).await {
        Ok(due) => Dispatcher { inner: inner.clone() }.start(due),
        Err(e) => {
            warn!(error = %e, "loading the steps a settle released failed; the poller takes them");
            inner.backlog.store(true, Ordering::Release);
            inner.wake.notify_one();
        }
    }
}

/// What becomes of a later step once `d`, the delivery it follows, ended with `settle` after
/// `record`: released (its destination's templates rendered from the event, the step's body and
/// the responses so far), skipped (`d` ended undelivered, or the step's status or conditions on
/// `d`'s response do not hold, or the current config has no such step), or failed (a template
/// cannot be rendered).
fn decide_step<T>(
    inner: &Inner<T>,
    d: &DueDelivery,
    step: &WaitingStep,
    record: &AttemptRecord,
    settle: &Settle,
    error: Option<&str>,
    response_headers: &[(String, String)],
) -> StepDecision {
    let id = step.id;
    let before = format!("{} (delivery {})", d.destination, d.id.0);
    if *settle != Settle::Delivered {
        let why = error.map(|e| format!(": {e}")).unwrap_or_default();
        return StepDecision::Skip { id, reason: format!("{before} ended {}{why}", settle.status()) };
    }
    let rules = inner.steps.load();
    let Some(rule) = rules.get(&(Arc::from(d.route.as_str()), Arc::from(step.destination.as_str()))) else {
        let reason = format!(
            "route {} of the current config has no step to {} after {}",
            d.route, step.destination, d.destination
        );
        return StepDecision::Skip { id, reason };
    };
    if let Some(codes) = &rule.status
        && !record.status_code.is_some_and(|c| codes.contains(&c))
    {
        let status = record.status_code.map_or_else(|| "none".to_string(), |c| c.to_string());
        return StepDecision::Skip {
            id,
            reason: format!("{before} answered {status}, not one of {codes:?} (then.status)"),
        };
    }
    let json: Option<serde_json::Value> =
        if rule.rule.needs_body() { serde_json::from_slice(&record.response).ok() } else { None };
    let mut headers = http::HeaderMap::new();
    for (k, v) in response_headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k.as_str()), http::HeaderValue::from_str(v)) {
            headers.append(k, v);
        }
    }
    let view = crate::rules::EventView { headers: &headers, body: json.as_ref(), event_type: None };
    if !rule.rule.matches(&view) {
        return StepDecision::Skip {
            id,
            reason: format!("the conditions on the response of {before} (then.when) do not hold"),
        };
    }
    // the responses so far, this one added: what this step's templates and its own steps read
    let mut responses = d
        .context
        .as_deref()
        .and_then(|c| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(c).ok())
        .unwrap_or_default();
    responses.insert(
        d.destination.to_string(),
        crate::template::response_entry(record.status_code, response_headers, &record.response),
    );
    let responses = serde_json::Value::Object(responses);
    let context = bytes::Bytes::from(responses.to_string());
    let keep = StepDecision::Release { id, url: None, headers: None, body: None, context: context.clone() };
    if step.rendered {
        return keep; // replayed: sent as it was rendered
    }
    let Some(dest) = inner.destinations.load().get(step.destination.as_str()).cloned() else {
        return keep; // its attempt fails it as "not in the current config"
    };
    if dest.templates.is_empty() {
        return keep;
    }
    match dest.templates.render(&d.headers, &step.body, Some(&responses)) {
        Ok(r) => StepDecision::Release {
            id,
            url: r.url,
            headers: (!r.headers.is_empty()).then(|| super::merge_headers(step.extra_headers.clone(), r.headers)),
            body: r.body,
            context,
        },
        Err(e) => StepDecision::Fail { id, reason: format!("destinations.{}: {e}", dest.name) },
    }
}

mod batches;

#[cfg(test)]
mod tests;
