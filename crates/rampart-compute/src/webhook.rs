//! Where alarm webhooks may go (12.1-6) without becoming a server-side request forgery.
//!
//! A webhook URL is parsed (never compared as a string: `https://hooks.example.com@127.0.0.1/`
//! starts with `https://hooks.example.com`) and must have the scheme, host and port of one of
//! the operator's allowed prefixes exactly, a path under that prefix's path on a segment
//! boundary, and no user information. Its host is resolved once, every address is checked,
//! and the connection goes to that checked address (no second lookup that DNS rebinding could
//! answer differently; no redirects). Loopback, link-local (the metadata service), private
//! and other special-purpose destinations are refused unless the operator lists their network.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use rampart_common::special::{Special, classify};
use url::Url;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{0:?} is not a URL")]
    Parse(String),
    #[error("webhooks are https:// URLs")]
    Scheme,
    #[error("a webhook URL carries no user name or password")]
    UserInfo,
    #[error("a webhook URL has a host name or address")]
    NoHost,
    #[error("the URL is not under a prefix allowed by compute.alarm_webhook_prefixes")]
    NotAllowed,
    #[error("{host} resolves to {addr}, a {kind} address not listed in compute.alarm_webhook_allowed_networks")]
    Destination { host: String, addr: IpAddr, kind: Special },
    #[error("{0} does not resolve")]
    Resolve(String),
    #[error("invalid {key}: {message}")]
    Config { key: &'static str, message: String },
}

/// A parsed allowed prefix.
#[derive(Debug, Clone)]
struct Prefix {
    host: String,
    port: u16,
    path: String,
}

/// The operator's webhook rules, parsed once.
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    prefixes: Vec<Prefix>,
    allowed_networks: Vec<IpNet>,
}

/// A webhook that passed [`WebhookPolicy::resolve`]: connect to `addr`, present `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub url: Url,
    pub host: String,
    pub addr: SocketAddr,
}

fn parse_https(s: &str) -> Result<(Url, String, u16), WebhookError> {
    let url = Url::parse(s).map_err(|_| WebhookError::Parse(s.chars().take(80).collect()))?;
    if url.scheme() != "https" {
        return Err(WebhookError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(WebhookError::UserInfo);
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(WebhookError::NoHost)?
        .to_string();
    let port = url.port_or_known_default().ok_or(WebhookError::NoHost)?;
    Ok((url, host, port))
}

impl WebhookPolicy {
    /// From `compute.alarm_webhook_prefixes` and `compute.alarm_webhook_allowed_networks`.
    pub fn new(prefixes: &[String], allowed_networks: &[String]) -> Result<WebhookPolicy, WebhookError> {
        let prefixes = prefixes
            .iter()
            .map(|p| {
                let (url, host, port) = parse_https(p).map_err(|e| WebhookError::Config {
                    key: "compute.alarm_webhook_prefixes",
                    message: e.to_string(),
                })?;
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(WebhookError::Config {
                        key: "compute.alarm_webhook_prefixes",
                        message: format!("{p:?}: a prefix has no query or fragment"),
                    });
                }
                Ok(Prefix {
                    host,
                    port,
                    path: url.path().to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allowed_networks = allowed_networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>().map_err(|_| WebhookError::Config {
                    key: "compute.alarm_webhook_allowed_networks",
                    message: format!("{n:?} is not a CIDR"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WebhookPolicy {
            prefixes,
            allowed_networks,
        })
    }

    /// Checks a webhook URL against the allowed prefixes (at alarm creation and again before
    /// every delivery).
    pub fn check_url(&self, s: &str) -> Result<Url, WebhookError> {
        let (url, host, port) = parse_https(s)?;
        let under = |prefix: &str| {
            let path = url.path();
            path == prefix
                || (path.starts_with(prefix) && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
        };
        if self
            .prefixes
            .iter()
            .any(|p| p.host == host && p.port == port && under(&p.path))
        {
            Ok(url)
        } else {
            Err(WebhookError::NotAllowed)
        }
    }

    /// Whether the destination address `addr` may be connected to.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), WebhookError> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        match classify(addr) {
            Some(kind) if !self.allowed_networks.iter().any(|n| n.contains(&addr)) => Err(WebhookError::Destination {
                host: host.to_string(),
                addr,
                kind,
            }),
            _ => Ok(()),
        }
    }

    /// Checks the URL, resolves its host once and checks every address it resolves to (one
    /// refused address refuses the whole host: a name that also points inside is not a public
    /// webhook). The result names the address to connect to.
    pub async fn resolve(&self, s: &str) -> Result<Destination, WebhookError> {
        let url = self.check_url(s)?;
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| WebhookError::Resolve(host.clone()))?
            .collect();
        let first = *addrs.first().ok_or_else(|| WebhookError::Resolve(host.clone()))?;
        for a in &addrs {
            self.check_addr(&host, a.ip())?;
        }
        Ok(Destination {
            url,
            host: bare.to_string(),
            addr: first,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> WebhookPolicy {
        WebhookPolicy::new(
            &[
                "https://hooks.example.com/alarms/".into(),
                "https://ops.example.org:8443".into(),
            ],
            &allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn spec_12_1_6_webhook_urls_match_scheme_host_port_and_path_exactly() {
        let p = policy(&[]);
        assert!(p.check_url("https://hooks.example.com/alarms/cpu?x=1").is_ok());
        assert!(p.check_url("https://HOOKS.example.com:443/alarms/").is_ok());
        assert!(p.check_url("https://ops.example.org:8443/anything").is_ok());
        // An `@` in the path is only a path: the request still goes to hooks.example.com.
        let u = p.check_url("https://hooks.example.com/alarms/@127.0.0.1/").unwrap();
        assert_eq!(u.host_str(), Some("hooks.example.com"));
        for bad in [
            // User info before the real host: a string prefix match let this through.
            "https://hooks.example.com@127.0.0.1:9555/",
            "https://hooks.example.com:x@127.0.0.1/alarms/",
            // A longer host under the attacker's domain.
            "https://hooks.example.com.attacker.test/alarms/",
            "https://hooks.example.com/alarmsx",
            "https://hooks.example.com:444/alarms/",
            "http://hooks.example.com/alarms/",
            "https://ops.example.org/anything",
            "not a url",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad} passed");
        }
        assert_eq!(
            p.check_url("https://hooks.example.com@127.0.0.1:9555/"),
            Err(WebhookError::UserInfo)
        );
    }

    #[test]
    fn spec_12_1_6_internal_destinations_are_refused_unless_listed() {
        let p = policy(&[]);
        for a in [
            "127.0.0.1",
            "169.254.169.254",
            "10.0.0.5",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "fe80::1",
        ] {
            assert!(p.check_addr("h", a.parse().unwrap()).is_err(), "{a} passed");
        }
        assert!(p.check_addr("h", "93.184.215.14".parse().unwrap()).is_ok());
        let listed = policy(&["127.0.0.0/8", "10.20.0.0/16"]);
        assert!(listed.check_addr("h", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(listed.check_addr("h", "::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(listed.check_addr("h", "10.20.1.1".parse().unwrap()).is_ok());
        assert!(listed.check_addr("h", "10.21.1.1".parse().unwrap()).is_err());
        assert!(listed.check_addr("h", "169.254.169.254".parse().unwrap()).is_err());
        assert!(WebhookPolicy::new(&["http://x".into()], &[]).is_err());
        assert!(WebhookPolicy::new(&[], &["10.0.0.0/33".into()]).is_err());
    }

    #[tokio::test]
    async fn spec_12_1_6_a_name_resolving_to_loopback_is_refused_after_resolution() {
        let p = WebhookPolicy::new(&["https://localhost:9555/".into()], &[]).unwrap();
        let e = p.resolve("https://localhost:9555/hook").await.unwrap_err();
        assert!(
            matches!(
                e,
                WebhookError::Destination {
                    kind: Special::Loopback,
                    ..
                }
            ),
            "{e}"
        );
        let p = WebhookPolicy::new(
            &["https://localhost:9555/".into()],
            &["127.0.0.0/8".into(), "::1/128".into()],
        )
        .unwrap();
        let d = p.resolve("https://localhost:9555/hook").await.unwrap();
        assert!(d.addr.ip().is_loopback());
        assert_eq!(d.addr.port(), 9555);
        assert_eq!(d.host, "localhost");
    }
}
