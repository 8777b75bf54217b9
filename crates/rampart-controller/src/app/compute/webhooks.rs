//! Alarm webhooks (spec 12.1-6): the operator's rules for where they may go, and their
//! delivery, which neither DNS nor the receiver can redirect.

use rampart_common::Error;
use rampart_common::error::ErrorChain;
use rampart_compute::webhook::WebhookPolicy;

/// The webhook rules of the configuration (12.1-6).
pub fn webhook_policy(c: &rampart_common::config::ComputeConfig) -> Result<WebhookPolicy, Error> {
    WebhookPolicy::new(&c.alarm_webhook_prefixes, &c.alarm_webhook_allowed_networks)
        .map_err(|e| Error::internal("reading the webhook configuration", e))
}

/// The system's CA bundle, which public webhook receivers are signed by.
pub(super) fn system_roots() -> Vec<u8> {
    std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default()
}

/// Posts a transition to each webhook (HTTPS, trusting `roots_pem`, 10 s), once; failures are
/// logged. Each URL is checked against the policy again at send time, its host resolved once
/// and every address checked; the connection goes to that address and no redirect is followed,
/// so neither DNS nor the receiver can send the controller anywhere else.
pub async fn send_webhooks(hooks: Vec<String>, policy: WebhookPolicy, roots_pem: Vec<u8>, body: serde_json::Value) {
    for url in hooks {
        match deliver(&policy, &roots_pem, &url, &body).await {
            Ok(status) => tracing::info!(url = %url, status, "alarm webhook delivered"),
            Err(e) => tracing::warn!(url = %url, error = %e, "alarm webhook not delivered"),
        }
    }
}

async fn deliver(policy: &WebhookPolicy, roots_pem: &[u8], url: &str, body: &serde_json::Value) -> Result<u16, String> {
    let dest = policy.resolve(url).await.map_err(|e| e.to_string())?;
    let tls = rampart_api::tls::client_config(roots_pem, None).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&dest.host, dest.addr)
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("rampart/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ErrorChain(&e).to_string())?;
    let resp = client
        .post(dest.url)
        .json(body)
        .send()
        .await
        .map_err(|e| ErrorChain(&e).to_string())?;
    let status = resp.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("the receiver answered {status} (redirects are not followed)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether anything connects to `listener` within a short wait.
    async fn connected(listener: &tokio::net::TcpListener) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(500), listener.accept())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn spec_12_1_6_webhooks_never_reach_an_unlisted_internal_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = serde_json::json!({"alarm": "x"});
        let prefixes = vec![
            "https://hooks.example.com".to_string(),
            format!("https://127.0.0.1:{port}/"),
        ];
        let closed = WebhookPolicy::new(&prefixes, &[]).unwrap();
        for url in [
            // The user-info trick and a direct loopback URL under an allowed prefix.
            format!("https://hooks.example.com@127.0.0.1:{port}/"),
            format!("https://127.0.0.1:{port}/hook"),
        ] {
            send_webhooks(vec![url.clone()], closed.clone(), system_roots(), body.clone()).await;
            assert!(!connected(&listener).await, "{url} reached 127.0.0.1:{port}");
        }
        // Listed by the operator, the same loopback receiver is reached: the check above could
        // have seen a connection.
        let open = WebhookPolicy::new(&prefixes, &["127.0.0.0/8".into()]).unwrap();
        let send = tokio::spawn(send_webhooks(
            vec![format!("https://127.0.0.1:{port}/hook")],
            open,
            system_roots(),
            body,
        ));
        assert!(connected(&listener).await, "the listed receiver was not reached");
        send.abort();
    }
}
