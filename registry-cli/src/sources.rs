//! `--source`: directory sources beside the backend, for `registry serve`, `list` and `watch`.
//!
//! | spec | source | label |
//! | --- | --- | --- |
//! | `static:FILE` | a JSON array of instances ([`StaticSource::from_file`]) | `static` |
//! | `dns:SERVICE=SRVNAME` | the SRV records of `SRVNAME`, as service `SERVICE` | `dns` |
//! | `dns:SRVNAME` | the same, the service named by the first label (`_web._tcp.example.` -> `web`) | `dns` |
//! | `dns:...@IP:PORT` | the same, asking this name server (else those of `/etc/resolv.conf`) | `dns` |
//! | `consul-catalog[=ADDR]` | every service of Consul's catalog (`ADDR`, else `CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`) | `consul-catalog` |
//!
//! The backend wins where a source shows the same service and id; then the sources in the order
//! of this table. Each source's instances carry its label (the API's `source`).

use std::path::PathBuf;
use std::sync::Arc;

use registry::consul::{CatalogSource, ConsulBuilder};
use registry::dns::{DnsSource, DnsSourceBuilder};
use registry::engine::{Directory, SourceHandle, StaticSource, validate_service};
use registry::{Error, ErrorKind, Result};

/// One `--source` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `static:FILE`.
    Static(PathBuf),
    /// `dns:[SERVICE=]SRVNAME[@IP:PORT]`.
    Dns {
        /// The service the records are shown as.
        service: String,
        /// The SRV name asked for.
        srv: String,
        /// The name server asked, if not the system's.
        nameserver: Option<std::net::SocketAddr>,
    },
    /// `consul-catalog[=ADDR]`.
    ConsulCatalog(Option<String>),
}

impl SourceSpec {
    /// Parses one `--source` value.
    pub fn parse(spec: &str) -> std::result::Result<SourceSpec, String> {
        if let Some(path) = spec.strip_prefix("static:") {
            if path.is_empty() {
                return Err("static: needs a file (static:FILE)".into());
            }
            return Ok(SourceSpec::Static(PathBuf::from(path)));
        }
        if let Some(name) = spec.strip_prefix("dns:") {
            let (name, nameserver) = match name.rsplit_once('@') {
                Some((name, ns)) => {
                    let ns = ns
                        .parse::<std::net::SocketAddr>()
                        .map_err(|_| format!("dns:...@{ns}: a name server is IP:PORT"))?;
                    (name, Some(ns))
                }
                None => (name, None),
            };
            let (service, srv) = match name.split_once('=') {
                Some((service, srv)) => (service.to_owned(), srv.to_owned()),
                None => {
                    let first = name.split('.').next().unwrap_or("");
                    (first.trim_start_matches('_').to_owned(), name.to_owned())
                }
            };
            if srv.is_empty() {
                return Err("dns: needs an SRV name (dns:SRVNAME or dns:SERVICE=SRVNAME)".into());
            }
            validate_service(&service).map_err(|e| {
                format!(
                    "dns:{name}: service `{service}`: {} (name it: dns:SERVICE=SRVNAME)",
                    e.message()
                )
            })?;
            return Ok(SourceSpec::Dns {
                service,
                srv,
                nameserver,
            });
        }
        if spec == "consul-catalog" {
            return Ok(SourceSpec::ConsulCatalog(None));
        }
        if let Some(addr) = spec.strip_prefix("consul-catalog=") {
            return Ok(SourceSpec::ConsulCatalog(Some(addr.to_owned())));
        }
        Err(format!(
            "`{spec}` is not a source: static:FILE, dns:[SERVICE=]SRVNAME[@IP:PORT] or \
             consul-catalog[=ADDR]"
        ))
    }
}

/// Precedences below the backend's, in the order of the module's table.
const STATIC_PRECEDENCE: i32 = -10;
const DNS_PRECEDENCE: i32 = -20;
const CATALOG_PRECEDENCE: i32 = -30;

/// The sources started for a command: they feed the directory for as long as this lives.
#[derive(Default)]
pub struct Sources {
    statics: Vec<SourceHandle>,
    dns: Option<Arc<DnsSource>>,
    dns_services: Vec<String>,
    catalog: Option<CatalogSource>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("statics", &self.statics.len())
            .field("dns", &self.dns_services)
            .field("catalog", &self.catalog.is_some())
            .finish()
    }
}

impl Sources {
    /// Starts `specs` into `dir`. The DNS names all go to one source; every static file is one
    /// source (`static`, `static-2`, ...).
    pub async fn start(dir: &Directory, specs: &[SourceSpec]) -> Result<Sources> {
        let mut sources = Sources::default();
        let mut dns = DnsSourceBuilder::default();
        let mut nameservers = Vec::new();
        for spec in specs {
            match spec {
                SourceSpec::Static(path) => {
                    let n = sources.statics.len();
                    let name = if n == 0 {
                        "static".to_owned()
                    } else {
                        format!("static-{}", n + 1)
                    };
                    let precedence = STATIC_PRECEDENCE - n as i32;
                    let handle = StaticSource::from_file(path)?.install(dir, &name, precedence)?;
                    sources.statics.push(handle);
                }
                SourceSpec::Dns {
                    service,
                    srv,
                    nameserver,
                } => {
                    dns = dns.follow(service.clone(), srv.clone());
                    if let Some(ns) = nameserver
                        && !nameservers.contains(ns)
                    {
                        nameservers.push(*ns);
                        dns = dns.nameserver(*ns);
                    }
                    sources.dns_services.push(service.clone());
                }
                SourceSpec::ConsulCatalog(addr) => {
                    if sources.catalog.is_some() {
                        return Err(Error::new(
                            ErrorKind::InvalidInput,
                            "--source consul-catalog is given twice",
                        ));
                    }
                    let consul = match addr {
                        Some(a) => ConsulBuilder::from_env()?.address(a.clone()),
                        None => ConsulBuilder::from_env()?,
                    };
                    let catalog = CatalogSource::builder(consul)
                        .all_services()
                        .start(dir, "consul-catalog", CATALOG_PRECEDENCE)
                        .await?;
                    sources.catalog = Some(catalog);
                }
            }
        }
        if !sources.dns_services.is_empty() {
            sources.dns = Some(Arc::new(dns.start(dir, "dns", DNS_PRECEDENCE)?));
        }
        Ok(sources)
    }

    /// Each source's name and whether it has listed once (static files at once; DNS once every
    /// name has been answered; the catalog once started).
    pub fn listed(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .statics
            .iter()
            .map(|s| (s.name().to_owned(), true))
            .collect();
        if let Some(dns) = &self.dns {
            let answered = self.dns_services.iter().all(|s| {
                dns.status(s)
                    .is_some_and(|st| st.revision > 0 || st.last_ttl.is_some())
            });
            out.push(("dns".to_owned(), answered));
        }
        if let Some(c) = &self.catalog {
            out.push((c.name().to_owned(), true));
        }
        out
    }

    /// A readiness check over these sources for `registry serve`'s `/readyz`.
    pub fn readiness(self: &Arc<Self>) -> impl Fn() -> Vec<(String, bool)> + Send + Sync + 'static {
        let me = self.clone();
        move || me.listed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            SourceSpec::parse("static:/etc/x.json"),
            Ok(SourceSpec::Static("/etc/x.json".into()))
        );
        assert_eq!(
            SourceSpec::parse("dns:_web._tcp.example."),
            Ok(SourceSpec::Dns {
                service: "web".into(),
                srv: "_web._tcp.example.".into(),
                nameserver: None
            })
        );
        assert_eq!(
            SourceSpec::parse("dns:api=api.service.consul.@172.17.0.3:8600"),
            Ok(SourceSpec::Dns {
                service: "api".into(),
                srv: "api.service.consul.".into(),
                nameserver: Some("172.17.0.3:8600".parse().unwrap())
            })
        );
        assert_eq!(
            SourceSpec::parse("consul-catalog"),
            Ok(SourceSpec::ConsulCatalog(None))
        );
        assert_eq!(
            SourceSpec::parse("consul-catalog=127.0.0.1:8501"),
            Ok(SourceSpec::ConsulCatalog(Some("127.0.0.1:8501".into())))
        );
        for bad in [
            "static:",
            "dns:",
            "dns:=x",
            "ldap:x",
            "consul",
            "dns:bad name=x",
        ] {
            assert!(SourceSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
