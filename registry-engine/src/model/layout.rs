//! The key layout: where instances live in the backend, `{namespace}/{service}/{id}`.

use registry_core::error::Result;

use crate::model::names::{validate_id, validate_namespace, validate_service};

/// The default namespace under which instances are stored.
pub const DEFAULT_NAMESPACE: &str = "registry";

/// Where instances live in the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    namespace: String,
}

impl Layout {
    pub(crate) fn new(namespace: &str) -> Result<Self> {
        validate_namespace(namespace)?;
        Ok(Layout {
            namespace: namespace.to_owned(),
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.namespace)
    }

    pub(crate) fn service_prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.namespace)
    }

    pub(crate) fn all_prefix(&self) -> String {
        format!("{}/", self.namespace)
    }

    /// Splits a key under the namespace into (service, id); `None` for keys of another shape.
    pub(crate) fn parse<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.namespace)?.strip_prefix('/')?;
        let (service, id) = rest.split_once('/')?;
        (validate_service(service).is_ok() && validate_id(id).is_ok()).then_some((service, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_parses_its_own_keys_only() {
        let l = Layout::new("registry").unwrap();
        assert_eq!(l.parse(&l.key("web", "a")), Some(("web", "a")));
        assert_eq!(l.parse("registry/web"), None);
        assert_eq!(l.parse("registry/web/a/b"), None);
        assert_eq!(l.parse("registryx/web/a"), None);
        assert_eq!(l.parse("other/web/a"), None);
    }
}
