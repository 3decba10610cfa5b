//! One gateway among several sharing a PostgreSQL store: its heartbeat (which also tells it how
//! many instances are alive, so each destination's limits are shared among them) and the signals
//! it hears from the others (pauses, resumes, replays, reloads), applied at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{error, info, warn};

use super::State;
use crate::reload::Reloader;
use crate::store::DestinationName;
use crate::store::cluster::{NodeRow, NodeState, NodeUpdate, Signal};

/// The instances as this one last heard of them (`status`, the admin API).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// This instance's id.
    pub node: String,
    /// Live instances, this one included.
    pub live: usize,
    /// Two live instances run different config versions (deploy the same file everywhere).
    pub config_drift: bool,
    /// Instances not heard from for `storage.postgres.node_timeout` that did not stop cleanly.
    pub dead: usize,
    pub nodes: Vec<NodeView>,
    /// What an operator should look at, in words.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub row: NodeRow,
    pub state: NodeState,
    /// This is the instance answering.
    pub this: bool,
}

impl ClusterView {
    fn of(me: &str, rows: Vec<NodeRow>, node_timeout: Duration) -> ClusterView {
        let timeout_ms = node_timeout.as_millis() as i64;
        let nodes: Vec<NodeView> =
            rows.into_iter().map(|row| NodeView { state: row.state(timeout_ms), this: row.id == me, row }).collect();
        let live: Vec<&NodeView> = nodes.iter().filter(|n| n.state == NodeState::Live).collect();
        let mut versions: Vec<&str> = live.iter().map(|n| n.row.config_version.as_str()).collect();
        versions.sort_unstable();
        versions.dedup();
        let dead: Vec<&NodeView> = nodes.iter().filter(|n| n.state == NodeState::Dead).collect();
        let mut warnings = Vec::new();
        if versions.len() > 1 {
            let each: Vec<String> =
                live.iter().map(|n| format!("{} runs {}", n.row.id, n.row.config_version)).collect();
            warnings.push(format!(
                "config drift: live instances run {} different config versions ({}); deploy the same routes.yaml everywhere",
                versions.len(),
                each.join(", ")
            ));
        }
        for n in &dead {
            warnings.push(format!(
                "instance {} ({}) has not been heard from for {} s; its deliveries are taken over as their leases end",
                n.row.id,
                n.row.address,
                n.row.age_ms / 1000
            ));
        }
        ClusterView {
            node: me.to_string(),
            live: live.len().max(1),
            config_drift: versions.len() > 1,
            dead: dead.len(),
            nodes,
            warnings,
        }
    }

    /// This instance's rank among the live ones, by id.
    fn rank(&self) -> usize {
        self.nodes.iter().filter(|n| n.state == NodeState::Live).take_while(|n| !n.this).count()
    }
}

/// This instance's heartbeat: records it (its addresses and config version), reads the others,
/// shares the destinations' limits among the live ones and keeps the view for `status`; logs when
/// the live set changes and when configs drift.
pub(super) struct Heartbeat {
    state: Arc<State>,
    me: String,
    address: String,
    admin: Option<String>,
    node_timeout: Duration,
    last_live: Vec<String>,
    last_drift: bool,
    failing: bool,
    first: bool,
}

impl Heartbeat {
    /// `None` for a store one process uses (SQLite).
    pub(super) fn new(
        state: Arc<State>,
        address: String,
        admin: Option<String>,
        node_timeout: Duration,
    ) -> Option<Heartbeat> {
        let me = state.dispatcher.store().node()?.to_string();
        Some(Heartbeat {
            state,
            me,
            address,
            admin,
            node_timeout,
            last_live: Vec::new(),
            last_drift: false,
            failing: false,
            first: true,
        })
    }

    /// One beat.
    pub(super) async fn beat(&mut self) {
        let store = self.state.dispatcher.store();
        let update = NodeUpdate {
            address: self.address.clone(),
            admin: self.admin.clone(),
            config_version: self.state.snapshot.load().version.clone(),
            first: self.first,
        };
        let (rows, shared) = match store.heartbeat(&update).await {
            Ok(beat) => {
                self.first = false;
                if self.failing {
                    info!("heartbeat recorded again");
                    self.failing = false;
                }
                beat
            }
            Err(e) => {
                if !self.failing {
                    error!(error = %e, "could not record this instance's heartbeat; the others will count it dead after storage.postgres.node_timeout");
                    self.failing = true;
                }
                return;
            }
        };
        let mut view = ClusterView::of(&self.me, rows, self.node_timeout);
        if shared {
            let problem = format!(
                "another process beats as instance {}: two running instances share one id, so they may send the same delivery at once; give each its own storage.postgres.node_id",
                self.me
            );
            error!(%problem, "instance id shared");
            view.warnings.insert(0, problem);
        }
        self.state.dispatcher.set_share(view.live, view.rank());
        let stopped = view.nodes.iter().filter(|n| n.state == NodeState::Stopped).count();
        crate::metrics::cluster(view.live, view.dead, stopped, view.config_drift);
        let live: Vec<String> =
            view.nodes.iter().filter(|n| n.state == NodeState::Live).map(|n| n.row.id.clone()).collect();
        if live != self.last_live {
            info!(node = %self.me, live = live.len(), instances = %live.join(","), "instances sharing the store changed; destination limits are shared among the live ones");
            self.last_live = live;
        }
        if view.config_drift != self.last_drift {
            if view.config_drift {
                warn!(problem = %view.warnings[0], "config drift");
            } else {
                info!("every live instance runs the same config version again");
            }
            self.last_drift = view.config_drift;
        }
        *self.state.cluster.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
    }

    /// Beats every `every` until `stop`.
    pub(super) async fn run(mut self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = interval.tick() => self.beat().await,
            }
        }
    }
}

/// Applies the signals of every instance (this one's too) until `stop`: a pause or resume at
/// once, a wake-up of the poller for replays and re-routes, a reload asked of another instance.
/// After a (re)connection, what may have been missed is read again from the store.
pub(super) async fn listen(state: Arc<State>, reloader: Arc<Reloader>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let store = state.dispatcher.store().clone();
    let Some(mut signals) = store.listen() else { return };
    let me = store.node().unwrap_or_default().to_string();
    loop {
        let signal = tokio::select! {
            _ = &mut stop => return,
            s = signals.recv() => match s {
                Some(s) => s,
                None => return,
            },
        };
        let started = Instant::now();
        match signal {
            None => state.dispatcher.refresh(),
            Some(Signal::Paused(d)) => state.dispatcher.set_paused(&DestinationName::from(d.as_str()), true),
            Some(Signal::Resumed(d)) => {
                state.dispatcher.set_paused(&DestinationName::from(d.as_str()), false);
                state.dispatcher.wake();
            }
            Some(Signal::Wake) => state.dispatcher.wake(),
            Some(Signal::Reload { from }) if from != me => {
                let outcome = reloader.reload(&format!("asked by instance {from}")).await;
                info!(from = %from, outcome = ?outcome, "reloaded as another instance asked");
            }
            Some(Signal::Reload { .. }) => {}
        }
        tracing::debug!(took_us = started.elapsed().as_micros() as u64, "applied a signal");
    }
}
