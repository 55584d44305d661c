//! [`CatalogSourceBuilder`]: which services, which health, the back-off; and starting.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use registry_consul::ConsulBuilder;
use registry_core::Result;
use registry_core::config::check_duration;
use registry_engine::{Directory, validate_service};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::follow::{Supervisor, Workers, first_outcomes};
use super::poll::Shared;
use super::{CatalogHealth, CatalogSource, Follow, SourceStats};

/// Configures a [`CatalogSource`]; from [`CatalogSource::builder`].
#[derive(Clone, Debug)]
pub struct CatalogSourceBuilder {
    pub(super) consul: ConsulBuilder,
    pub(super) follow: Follow,
    pub(super) health: CatalogHealth,
    pub(super) backoff_base: Duration,
    pub(super) backoff_max: Duration,
}

impl CatalogSourceBuilder {
    /// Follows `service` (and, called again, others); without this call every service in the
    /// catalog is followed.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        let service = service.into();
        match &mut self.follow {
            Follow::List(l) => {
                l.insert(service);
            }
            Follow::All { .. } => self.follow = Follow::List(BTreeSet::from([service])),
        }
        self
    }

    /// Follows these services.
    pub fn services<S: Into<String>>(mut self, services: impl IntoIterator<Item = S>) -> Self {
        for s in services {
            self = self.service(s);
        }
        self
    }

    /// Follows every service in the catalog (the default), as it comes and goes.
    pub fn all_services(mut self) -> Self {
        if let Follow::List(_) = self.follow {
            self.follow = Follow::All {
                exclude: BTreeSet::new(),
            };
        }
        self
    }

    /// When following every service, leaves this one out (for example `consul`, the servers'
    /// own entry).
    pub fn exclude(mut self, service: impl Into<String>) -> Self {
        if let Follow::All { exclude } = &mut self.follow {
            exclude.insert(service.into());
        }
        self
    }

    /// Which entries are shown (default [`CatalogHealth::Passing`]).
    pub fn health(mut self, health: CatalogHealth) -> Self {
        self.health = health;
        self
    }

    /// Retry back-off bounds after errors (default 100 ms to 5 s, jittered).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Starts following, publishing into `dir` as source `name` with `precedence` (see
    /// [`Directory::source`]). Returns once every followed service has been read once or has
    /// failed to be (then it is marked stale and retried); an error the agent will keep giving
    /// (a refused token, a bad request) is returned instead.
    pub async fn start(
        self,
        dir: &Directory,
        name: &str,
        precedence: i32,
    ) -> Result<CatalogSource> {
        let agent = self.consul.agent()?;
        check_duration("Consul request timeout", agent.request_timeout())?;
        check_duration("Consul blocking query wait", agent.watch_wait())?;
        check_duration("Consul minimum poll interval", agent.min_poll_interval())?;
        registry_core::config::check_max_duration("catalog back-off base", self.backoff_base)?;
        registry_core::config::check_max_duration("catalog back-off maximum", self.backoff_max)?;
        if let Follow::List(l) = &self.follow {
            for s in l {
                validate_service(s)?;
            }
        }
        // A refused token or request is the caller's to see before the source takes its name in
        // the directory (a name stays taken). An agent that does not answer is not: the source
        // starts, and its views are stale until the agent answers.
        if let Err(e) = agent
            .request(
                "GET",
                "/v1/catalog/services",
                "",
                None,
                agent.request_timeout(),
            )
            .await
            && e.kind().is_permanent()
        {
            return Err(e.context(format!(
                "cannot follow Consul's catalog at {}",
                agent.address()
            )));
        }
        let handle = dir.source(name, precedence)?;
        let shared = Arc::new(Shared {
            handle,
            health: self.health,
            request_timeout: agent.request_timeout(),
            wait: agent.watch_wait(),
            min_interval: agent.min_poll_interval(),
            agent,
            backoff: (self.backoff_base, self.backoff_max),
            stats: SourceStats::default(),
        });
        let tasks = match &self.follow {
            Follow::List(services) => {
                let mut workers = Workers::default();
                let mut firsts = Vec::new();
                for s in services {
                    firsts.push(workers.spawn(&shared, s));
                }
                let outcome = first_outcomes(firsts).await;
                outcome?;
                workers.into_tasks()
            }
            Follow::All { exclude } => {
                let (tx, rx) = oneshot::channel();
                let sup = Supervisor {
                    shared: shared.clone(),
                    exclude: exclude.clone(),
                    workers: Workers::default(),
                    refused: BTreeSet::new(),
                    first: Some(tx),
                };
                let mut tasks = JoinSet::new();
                tasks.spawn(sup.run());
                if let Ok(Err(e)) = rx.await {
                    return Err(e);
                }
                tasks
            }
        };
        Ok(CatalogSource {
            shared,
            tasks,
            follow: self.follow,
        })
    }
}
