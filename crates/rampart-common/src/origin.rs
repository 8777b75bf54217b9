//! Web origins of the API, for the same-origin check of cookie sessions (spec 9.3-3). The
//! `Origin` a browser sends is compared with the origins the operator configured (or, by
//! default, the names of the API's certificate on its listening ports), never with the
//! request's own `Host`: after DNS rebinding, an attacker's page and its requests carry the
//! attacker's name in both.

use std::net::Ipv6Addr;

/// The serialized origin of `s` (`https://host[:port]`, host lowercased, port 443 dropped), or
/// why `s` is not an https origin.
pub fn https_origin(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not an origin like https://cloud.example.com: {e}"))?;
    if u.scheme() != "https" {
        return Err(format!("{s:?}: the API is served over https only"));
    }
    if u.host().is_none()
        || !u.username().is_empty()
        || u.password().is_some()
        || !matches!(u.path(), "" | "/")
        || u.query().is_some()
        || u.fragment().is_some()
    {
        return Err(format!("{s:?}: an origin is a scheme, a host and a port, nothing else"));
    }
    Ok(u.origin().ascii_serialization())
}

/// The origins browsers reach the API by when none is configured: each of `names` (those of
/// the server certificate: a browser accepts no other) with each of `ports`.
pub fn default_origins(names: &[String], ports: &[u16]) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        let host = if name.parse::<Ipv6Addr>().is_ok() {
            format!("[{name}]")
        } else {
            name.clone()
        };
        for port in ports {
            if let Ok(o) = https_origin(&format!("https://{host}:{port}"))
                && !out.contains(&o)
            {
                out.push(o);
            }
        }
    }
    out
}

/// Whether the `Origin` header value is one of `allowed` (serialized origins).
pub fn is_allowed(origin: &str, allowed: &[String]) -> bool {
    https_origin(origin).is_ok_and(|o| allowed.contains(&o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_3_3_origins_are_normalised_and_must_be_bare_https() {
        assert_eq!(
            https_origin("https://Cloud.Example.com").unwrap(),
            "https://cloud.example.com"
        );
        assert_eq!(
            https_origin("https://cloud.example.com:443/").unwrap(),
            "https://cloud.example.com"
        );
        assert_eq!(https_origin("https://[::1]:8443").unwrap(), "https://[::1]:8443");
        for bad in [
            "http://cloud.example.com",
            "https://cloud.example.com/app",
            "https://user@cloud.example.com",
            "https://cloud.example.com?x=1",
            "cloud.example.com",
            "null",
            "",
        ] {
            assert!(https_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_9_3_3_default_origins_are_the_certificate_names_on_the_listening_ports() {
        let names = ["localhost", "127.0.0.1", "::1", "api.example.com"].map(String::from);
        let o = default_origins(&names, &[8443, 443]);
        for want in [
            "https://localhost:8443",
            "https://127.0.0.1:8443",
            "https://[::1]:8443",
            "https://api.example.com:8443",
            "https://api.example.com",
        ] {
            assert!(o.contains(&want.to_string()), "{want} missing from {o:?}");
        }
        assert!(is_allowed("https://API.example.com:8443", &o));
        // A rebound name, whatever the Host header says, and look-alikes of allowed origins.
        for refused in [
            "https://rebound.attacker.test:8443",
            "http://localhost:8443",
            "https://localhost:9443",
            "https://api.example.com.attacker.test:8443",
            "https://api.example.com@attacker.test:8443",
            "null",
        ] {
            assert!(!is_allowed(refused, &o), "{refused}");
        }
    }
}
