//! The mirror's task: one agent call at a time, taking its jobs from the [`Queue`] (removals
//! first), with failures counted, logged once per run of failures, and retried at the next
//! heartbeat.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use registry_consul::ConsulAgent;
use registry_core::counters::Bump;
use registry_engine::Instance;
use serde::Deserialize;
use serde_json::{Value, json};

use super::queue::{Change, Job, Queue};
use super::service::{
    META_LEASE, go_duration, lease_service_id, query_value, service_meta, service_tags,
    split_address,
};
use super::{Counters, DEREGISTER_AFTER, LEASE_SERVICE};

#[derive(Default)]
struct LeaseEntry {
    ttl: Option<Duration>,
    /// Its own entry (with the TTL check) is registered with the agent, as far as we know.
    registered: bool,
    /// The service IDs of its instances.
    members: BTreeSet<String>,
}

struct InstanceEntry {
    session: String,
    registration: Value,
    offline: bool,
    /// The agent holds `registration` (and the maintenance state below).
    synced: bool,
    /// Whether maintenance mode is on at the agent, as far as we know (`None`: unknown).
    maintenance: Option<bool>,
}

/// Whose a removal that depends on ownership is: the lease the entry was ours under (if known),
/// and the lease holding its key now (if another's).
#[derive(Clone, Default)]
struct IfOurs {
    session: Option<String>,
    holder: Option<String>,
}

pub(super) struct Mirror {
    agent: ConsulAgent,
    timeout: Duration,
    counters: Arc<Counters>,
    leases: HashMap<String, LeaseEntry>,
    instances: BTreeMap<String, InstanceEntry>,
    /// Deregistrations that failed: retried at every heartbeat until the agent confirms them (an
    /// entry left behind would stay passing while its lease lives).
    pending_deregisters: BTreeSet<String>,
    /// Removals that depend on the agent's entry being ours (a yielded instance, the delete of an
    /// ID we have not registered) that could not be checked or done yet: service ID -> the lease
    /// it was ours under (if known) and the lease holding its key now (if another's). Retried at
    /// every heartbeat, and done only while the agent's entry is still ours.
    pending_if_ours: BTreeMap<String, IfOurs>,
    /// The last request failed (for logging: one warning per run of failures).
    failing: bool,
    /// The services the agent has in maintenance mode (see [`Mirror::in_maintenance`]).
    in_maintenance: Option<BTreeSet<String>>,
}

impl Mirror {
    pub(super) fn new(agent: ConsulAgent, counters: Arc<Counters>) -> Mirror {
        Mirror {
            timeout: agent.request_timeout(),
            agent,
            counters,
            leases: HashMap::new(),
            instances: BTreeMap::new(),
            pending_deregisters: BTreeSet::new(),
            pending_if_ours: BTreeMap::new(),
            failing: false,
            in_maintenance: None,
        }
    }

    pub(super) async fn run(mut self, queue: Arc<Queue>) {
        let _guard = queue.task_guard();
        while let Some(job) = queue.next().await {
            match job {
                Job::Granted { session, ttl } => {
                    self.leases.entry(session).or_default().ttl = Some(ttl);
                }
                Job::LeaseEnded { session } => self.lease_ended(&session).await,
                Job::Instance { service_id, change } => match change {
                    Change::Put { instance, session } => {
                        self.put(service_id, &instance, session).await;
                    }
                    Change::Delete => self.delete(&service_id).await,
                    Change::Yield { holder } => self.yielded(&service_id, holder).await,
                },
                Job::Heartbeat { session } => self.heartbeat(&session).await,
            }
        }
    }

    /// One request to the agent; `true` when it answered with success.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        body: Option<Value>,
    ) -> bool {
        self.counters.requests.bump();
        let body = body.map(|b| b.to_string().into_bytes());
        let what = format!("{method} {path}");
        match self
            .agent
            .request(method, path, query, body, self.timeout)
            .await
        {
            Ok(a) if a.is_success() => {
                if self.failing {
                    self.failing = false;
                    tracing::info!("consul catalog mirror: the agent accepts requests again");
                }
                true
            }
            Ok(a) => {
                self.failed(&what, &format!("{} {}", a.status, a.text()));
                false
            }
            Err(e) => {
                self.failed(&what, &e.to_string());
                false
            }
        }
    }

    fn failed(&mut self, what: &str, why: &str) {
        self.counters.failures.bump();
        if self.failing {
            tracing::debug!(
                request = what,
                error = why,
                "consul catalog mirror: request failed"
            );
        } else {
            self.failing = true;
            tracing::warn!(
                request = what,
                error = why,
                "consul catalog mirror: request failed; the KV registration is unaffected, the \
                 catalog is retried at the next keep-alive (catalog=false in the URL turns the \
                 mirror off)"
            );
        }
    }

    /// An answer the mirror cannot use: a failure like any other, counted as such too.
    fn unreadable(&mut self, what: &str, why: &str) {
        self.counters.unreadable.bump();
        self.failed(what, &format!("unusable answer: {why}"));
    }

    async fn put(&mut self, service_id: String, inst: &Instance, session: String) {
        let registration = self.registration(&service_id, &session, inst);
        let mut maintenance = None;
        if let Some(old) = self.instances.remove(&service_id) {
            maintenance = old.maintenance;
            if old.session != session {
                self.leave_lease(&old.session, &service_id).await;
            }
        }
        self.pending_deregisters.remove(&service_id);
        self.pending_if_ours.remove(&service_id);
        self.leases
            .entry(session.clone())
            .or_default()
            .members
            .insert(service_id.clone());
        self.instances.insert(
            service_id.clone(),
            InstanceEntry {
                session,
                registration,
                offline: !inst.is_online(),
                synced: false,
                maintenance,
            },
        );
        self.sync_instance(&service_id).await;
    }

    fn registration(&self, service_id: &str, session: &str, inst: &Instance) -> Value {
        let (address, port) = split_address(inst.addrs.first().map_or("", String::as_str));
        let (meta, skipped) = service_meta(inst, session);
        for (k, why) in &skipped {
            self.counters.meta_skipped.bump();
            tracing::warn!(
                instance = %inst,
                meta_key = %k.chars().take(64).collect::<String>(),
                why,
                "consul catalog mirror: metadata entry left out of the service's Meta"
            );
        }
        let lease_id = lease_service_id(session);
        json!({
            "ID": service_id,
            "Name": inst.service,
            "Tags": service_tags(inst),
            "Address": address,
            "Port": port,
            "Meta": meta,
            "Weights": {"Passing": inst.weight, "Warning": 1},
            "Check": {
                "Name": "registry lease",
                "Notes": format!(
                    "alias of {lease_id}: passing while the registering process keeps its lease alive"
                ),
                "AliasService": lease_id,
                "DeregisterCriticalServiceAfter": go_duration(DEREGISTER_AFTER),
            },
        })
    }

    /// Registers an instance (its lease's entry first) and sets its maintenance mode; `true` when
    /// the agent has it all.
    async fn sync_instance(&mut self, service_id: &str) -> bool {
        let Some(e) = self.instances.get(service_id) else {
            return true;
        };
        let session = e.session.clone();
        let registration = e.registration.clone();
        if !self.ensure_lease(&session).await {
            return false;
        }
        if !self
            .request("PUT", "/v1/agent/service/register", "", Some(registration))
            .await
        {
            return false;
        }
        self.counters.registered.bump();
        let Some(e) = self.instances.get(service_id) else {
            return true;
        };
        let offline = e.offline;
        // Maintenance mode survives a re-registration: for an ID new to this process (an earlier
        // run may have left it on) ask the agent's list, read once; then set it when it differs.
        if e.maintenance.is_none() {
            let on = self
                .in_maintenance()
                .await
                .map(|ids| ids.contains(service_id));
            if let Some(e) = self.instances.get_mut(service_id) {
                e.maintenance = on;
            }
        }
        let known = self.instances.get(service_id).and_then(|e| e.maintenance);
        if known != Some(offline) {
            let query = if offline {
                format!(
                    "enable=true&reason={}",
                    query_value("offline: set_online(false) through the service registry")
                )
            } else {
                "enable=false".to_owned()
            };
            let path = format!("/v1/agent/service/maintenance/{service_id}");
            if !self.request("PUT", &path, &query, None).await {
                return false;
            }
            if let Some(e) = self.instances.get_mut(service_id) {
                e.maintenance = Some(offline);
            }
            if let Some(ids) = &mut self.in_maintenance {
                if offline {
                    ids.insert(service_id.to_owned());
                } else {
                    ids.remove(service_id);
                }
            }
        }
        if let Some(e) = self.instances.get_mut(service_id) {
            e.synced = true;
        }
        true
    }

    /// The services the agent has in maintenance mode: listed once (`GET /v1/agent/checks`), then
    /// kept up to date with our own changes. `None` when the agent does not answer.
    async fn in_maintenance(&mut self) -> Option<&BTreeSet<String>> {
        if self.in_maintenance.is_none() {
            self.counters.requests.bump();
            let a = match self
                .agent
                .request("GET", "/v1/agent/checks", "", None, self.timeout)
                .await
            {
                Ok(a) if a.status == 200 => a,
                Ok(a) => {
                    self.failed(
                        "GET /v1/agent/checks",
                        &format!("{} {}", a.status, a.text()),
                    );
                    return None;
                }
                Err(e) => {
                    self.failed("GET /v1/agent/checks", &e.to_string());
                    return None;
                }
            };
            #[derive(Deserialize)]
            struct Check {
                #[serde(rename = "CheckID")]
                check_id: String,
                #[serde(rename = "ServiceID", default)]
                service_id: String,
            }
            let checks: HashMap<String, Check> = match serde_json::from_slice(&a.body) {
                Ok(c) => c,
                Err(e) => {
                    self.unreadable("GET /v1/agent/checks", &e.to_string());
                    return None;
                }
            };
            self.in_maintenance = Some(
                checks
                    .into_values()
                    .filter(|c| c.check_id.starts_with("_service_maintenance:"))
                    .map(|c| c.service_id)
                    .collect(),
            );
        }
        self.in_maintenance.as_ref()
    }

    /// Registers the lease's own entry with its TTL check (passing) unless the agent has it.
    async fn ensure_lease(&mut self, session: &str) -> bool {
        let entry = self.leases.entry(session.to_owned()).or_default();
        if entry.registered {
            return true;
        }
        let ttl = match entry.ttl {
            Some(t) => t,
            None => match self.session_ttl(session).await {
                Some(t) => {
                    self.leases.entry(session.to_owned()).or_default().ttl = Some(t);
                    t
                }
                None => return false,
            },
        };
        let id = lease_service_id(session);
        let body = json!({
            "ID": id,
            "Name": LEASE_SERVICE,
            "Meta": {META_LEASE: session},
            "Check": {
                "CheckID": id,
                "Name": "registry lease heartbeat",
                "Notes": "passed at every keep-alive of the lease; its instances' checks are aliases of this one",
                "TTL": go_duration(ttl),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": go_duration(DEREGISTER_AFTER),
            },
        });
        if !self
            .request("PUT", "/v1/agent/service/register", "", Some(body))
            .await
        {
            return false;
        }
        self.leases
            .entry(session.to_owned())
            .or_default()
            .registered = true;
        true
    }

    /// The TTL of a lease this backend did not grant (another handle of the same session).
    async fn session_ttl(&mut self, session: &str) -> Option<Duration> {
        self.counters.requests.bump();
        let path = format!("/v1/session/info/{session}");
        let a = match self
            .agent
            .request("GET", &path, "", None, self.timeout)
            .await
        {
            Ok(a) if a.status == 200 => a,
            Ok(a) => {
                self.failed(&path, &format!("{} {}", a.status, a.text()));
                return None;
            }
            Err(e) => {
                self.failed(&path, &e.to_string());
                return None;
            }
        };
        #[derive(Deserialize)]
        struct S {
            #[serde(rename = "TTL")]
            ttl: String,
        }
        let s: Option<Vec<S>> = match serde_json::from_slice(&a.body) {
            Ok(s) => s,
            Err(e) => {
                self.unreadable(&path, &e.to_string());
                return None;
            }
        };
        let Some(s) = s.unwrap_or_default().into_iter().next() else {
            // The lease has ended (its end is on its way): nothing to register under it.
            self.failed(&path, "no such session");
            return None;
        };
        let ttl = registry_core::config::parse_duration(&s.ttl);
        if ttl.is_none() {
            let ttl = s.ttl.chars().take(32).collect::<String>();
            self.unreadable(
                &path,
                &format!("the session has no usable TTL ({ttl:?}): its instances are not mirrored"),
            );
        }
        ttl
    }

    async fn deregister(&mut self, service_id: &str) -> bool {
        let path = format!("/v1/agent/service/deregister/{service_id}");
        if self.request("PUT", &path, "", None).await {
            self.counters.deregistered.bump();
            self.pending_deregisters.remove(service_id);
            true
        } else {
            self.pending_deregisters.insert(service_id.to_owned());
            false
        }
    }

    async fn delete(&mut self, service_id: &str) {
        match self.instances.remove(service_id) {
            Some(old) => {
                self.deregister(service_id).await;
                self.leave_lease(&old.session, service_id).await;
            }
            // Not registered by us as far as we know (yielded earlier, or never written to the
            // agent): the entry goes only if it is ours.
            None if self.pending_if_ours.contains_key(service_id) => {}
            None => {
                if !self.remove_if_ours(service_id, None, None).await {
                    self.pending_if_ours
                        .insert(service_id.to_owned(), IfOurs::default());
                }
            }
        }
    }

    /// Another live owner (lease `holder`) holds the instance's key: it leaves what this mirror
    /// registers and heartbeats, and its entry leaves the agent only if it is still ours.
    async fn yielded(&mut self, service_id: &str, holder: String) {
        let old = self.instances.remove(service_id);
        self.pending_deregisters.remove(service_id);
        let session = old.as_ref().map(|e| e.session.clone());
        if let Some(s) = &session {
            self.leave_lease(s, service_id).await;
        }
        // Its maintenance mode is no longer ours to know.
        self.in_maintenance = None;
        if self
            .remove_if_ours(service_id, session.as_deref(), Some(&holder))
            .await
        {
            self.pending_if_ours.remove(service_id);
        } else {
            let whose = IfOurs {
                session,
                holder: Some(holder),
            };
            self.pending_if_ours.insert(service_id.to_owned(), whose);
        }
    }

    /// Deregisters `service_id` if the agent's entry is ours: its `registry_lease` is `session`
    /// or another lease of ours, and not `holder`'s. `true` when done (removed, absent, or
    /// another's, left alone); `false` when the agent could not tell or refused (retry later).
    async fn remove_if_ours(
        &mut self,
        service_id: &str,
        session: Option<&str>,
        holder: Option<&str>,
    ) -> bool {
        let path = format!("/v1/agent/service/{service_id}");
        self.counters.requests.bump();
        let a = match self
            .agent
            .request("GET", &path, "", None, self.timeout)
            .await
        {
            Ok(a) if a.status == 200 => a,
            Ok(a) if a.status == 404 => return true,
            Ok(a) => {
                self.failed(
                    &format!("GET {path}"),
                    &format!("{} {}", a.status, a.text()),
                );
                return false;
            }
            Err(e) => {
                self.failed(&format!("GET {path}"), &e.to_string());
                return false;
            }
        };
        #[derive(Deserialize)]
        struct Service {
            #[serde(rename = "Meta", default)]
            meta: Option<HashMap<String, String>>,
        }
        let entry: Service = match serde_json::from_slice(&a.body) {
            Ok(s) => s,
            Err(e) => {
                self.unreadable(&format!("GET {path}"), &e.to_string());
                return false;
            }
        };
        let lease = entry.meta.unwrap_or_default().remove(META_LEASE);
        let ours = lease.as_deref().is_some_and(|l| {
            Some(l) != holder && (Some(l) == session || self.leases.contains_key(l))
        });
        if !ours {
            tracing::debug!(
                service_id,
                lease = lease.as_deref().unwrap_or(""),
                "consul catalog mirror: the agent's entry is another owner's; left alone"
            );
            return true;
        }
        let path = format!("/v1/agent/service/deregister/{service_id}");
        if !self.request("PUT", &path, "", None).await {
            return false;
        }
        self.counters.deregistered.bump();
        if let Some(ids) = &mut self.in_maintenance {
            ids.remove(service_id);
        }
        true
    }

    /// Takes an instance off its lease; a lease left with no instance leaves the catalog too.
    async fn leave_lease(&mut self, session: &str, service_id: &str) {
        let Some(lease) = self.leases.get_mut(session) else {
            return;
        };
        lease.members.remove(service_id);
        if lease.members.is_empty() && lease.registered {
            lease.registered = false;
            self.deregister(&lease_service_id(session)).await;
        }
    }

    async fn heartbeat(&mut self, session: &str) {
        // Earlier failures first, stopping at the first that fails again: an agent that refuses
        // (a token without service:write) costs a request or two per heartbeat, not one per
        // instance.
        let retries: Vec<String> = self.pending_deregisters.iter().cloned().collect();
        let mut working = true;
        for id in retries {
            if !self.deregister(&id).await {
                working = false;
                break;
            }
        }
        let checked: Vec<(String, IfOurs)> = match working {
            true => self
                .pending_if_ours
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            false => Vec::new(),
        };
        for (id, whose) in checked {
            if !self
                .remove_if_ours(&id, whose.session.as_deref(), whose.holder.as_deref())
                .await
            {
                break;
            }
            self.pending_if_ours.remove(&id);
        }
        let Some(lease) = self.leases.get(session) else {
            return;
        };
        if lease.members.is_empty() {
            // A lease with no instance (plain keys, or all deregistered): nothing to keep alive.
            return;
        }
        // Instances whose registration failed earlier are tried again first.
        let unsynced: Vec<String> = lease
            .members
            .iter()
            .filter(|id| self.instances.get(*id).is_some_and(|e| !e.synced))
            .cloned()
            .collect();
        for id in &unsynced {
            if !self.sync_instance(id).await {
                break;
            }
        }
        if !self.leases.get(session).is_some_and(|l| l.registered) {
            return;
        }
        let path = format!("/v1/agent/check/pass/{}", lease_service_id(session));
        if self.request("PUT", &path, "", None).await {
            self.counters.heartbeats.bump();
            return;
        }
        // The agent does not know the check (it restarted without its state, or reaped the
        // entry after a long silence) or did not answer: register everything of this lease
        // again (the entry is registered passing, which is the heartbeat).
        let members: Vec<String> = match self.leases.get_mut(session) {
            Some(l) => {
                l.registered = false;
                l.members.iter().cloned().collect()
            }
            None => return,
        };
        for id in &members {
            if let Some(e) = self.instances.get_mut(id) {
                e.synced = false;
                e.maintenance = None;
            }
        }
        self.in_maintenance = None;
        for id in &members {
            if !self.sync_instance(id).await {
                break;
            }
        }
    }

    async fn lease_ended(&mut self, session: &str) {
        let lease = self.leases.remove(session).unwrap_or_default();
        if !lease.registered && lease.members.is_empty() {
            // Nothing of this lease was mirrored (a lease for plain keys).
            return;
        }
        // The agent says which services are on this lease (by our meta key): an instance that
        // another process took over on this agent is on its lease now and stays. Only when the
        // agent cannot tell, our own record.
        let filter = format!("Meta.{META_LEASE} == \"{session}\"");
        self.counters.requests.bump();
        let what = "GET /v1/agent/services";
        let listed = match self
            .agent
            .request(
                "GET",
                "/v1/agent/services",
                &format!("filter={}", query_value(&filter)),
                None,
                self.timeout,
            )
            .await
        {
            Ok(a) if a.status == 200 => {
                match serde_json::from_slice::<HashMap<String, Value>>(&a.body) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        self.unreadable(what, &e.to_string());
                        None
                    }
                }
            }
            Ok(a) => {
                self.failed(what, &format!("{} {}", a.status, a.text()));
                None
            }
            Err(e) => {
                self.failed(what, &e.to_string());
                None
            }
        };
        let mut ids: BTreeSet<String> = match listed {
            Some(listed) => listed.into_keys().collect(),
            None => lease.members,
        };
        let lease_id = lease_service_id(session);
        ids.remove(&lease_id);
        for id in ids {
            // Not one that has moved to another lease since.
            if self
                .instances
                .get(&id)
                .is_some_and(|e| e.session != session)
            {
                continue;
            }
            self.instances.remove(&id);
            self.deregister(&id).await;
        }
        self.deregister(&lease_id).await;
    }
}
