//! Where the generator replicas are: a fixed list, or every address behind a DNS name (a
//! Kubernetes headless Service), asked again every so often so that replicas can come and go
//! while a run is going.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use crate::FanoutError;

/// A resolver's answer, on its way.
pub type Resolution<'a> = Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>>;

/// Answers "which replicas are there now?" with `http://host:port` URLs.
pub trait Resolver: Send + Sync + Debug {
    fn resolve(&self) -> Resolution<'_>;
}

/// A list given on the command line; it never changes.
#[derive(Debug, Clone)]
pub struct StaticResolver(pub Vec<String>);

impl Resolver for StaticResolver {
    fn resolve(&self) -> Resolution<'_> {
        Box::pin(async { Ok(self.0.clone()) })
    }
}

/// Every address `host` resolves to, each as `http://<address>:<port>`: behind a headless
/// Service, one per ready pod.
#[derive(Debug, Clone)]
pub struct DnsResolver {
    pub host: String,
    pub port: u16,
}

impl Resolver for DnsResolver {
    fn resolve(&self) -> Resolution<'_> {
        Box::pin(async {
            let addresses = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("resolving {}: {e}", self.host))?;
            let mut urls: Vec<String> = addresses.map(|a| format!("http://{a}")).collect();
            urls.sort();
            urls.dedup();
            Ok(urls)
        })
    }
}

/// The resolver for `--generators`: one `dns://host:port`, or a list of `http://host:port` URLs.
pub fn resolver_for(generators: &[String]) -> Result<Box<dyn Resolver>, FanoutError> {
    let bad = |message: &str| FanoutError::Endpoint { url: generators.join(","), message: message.into() };
    match generators {
        [] => Err(FanoutError::NoReplicas),
        [one] if one.starts_with("dns://") => {
            let target = &one["dns://".len()..];
            let (host, port) = target.rsplit_once(':').ok_or_else(|| bad("dns:// needs host:port"))?;
            let port = port.parse().map_err(|_| bad("dns://host:port needs a numeric port"))?;
            if host.is_empty() {
                return Err(bad("dns:// needs a host name"));
            }
            Ok(Box::new(DnsResolver { host: host.to_string(), port }))
        }
        list if list.iter().any(|g| g.starts_with("dns://")) => {
            Err(bad("give either one dns://host:port or a list of URLs, not both"))
        }
        list => Ok(Box::new(StaticResolver(list.to_vec()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_name_a_list_or_one_dns_target() {
        let list = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        assert!(format!("{:?}", resolver_for(&list).unwrap()).contains("StaticResolver"));
        let dns = resolver_for(&["dns://rlhf-generator.ns.svc.cluster.local:50061".into()]).unwrap();
        assert!(format!("{dns:?}").contains("host: \"rlhf-generator.ns.svc.cluster.local\", port: 50061"));
        for bad in [
            vec![],
            vec!["dns://nohost".to_string()],
            vec!["dns://h:x".into()],
            vec!["dns://h:1".into(), "http://a:1".into()],
        ] {
            assert!(resolver_for(&bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn dns_names_resolve_to_every_address_as_urls() {
        let urls = DnsResolver { host: "localhost".into(), port: 50061 }.resolve().await.unwrap();
        assert!(!urls.is_empty() && urls.iter().all(|u| u.starts_with("http://") && u.ends_with(":50061")), "{urls:?}");
    }
}
