//! Typed HTTPS client of the Rampart API, used by the CLI, the agent and the tests.

use std::time::Duration;

use rampart_common::Sensitive;
use rampart_common::error::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::agent::{AgentStatus, JoinRequest, JoinResponse, NodeConfig, StatusAck};
use crate::tls::{self, TlsError};
use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {}: {}", body.error.code, body.error.message)]
    Api { status: StatusCode, body: ErrorBody },
    #[error("unexpected response {status} from {url}")]
    Unexpected { status: StatusCode, url: String },
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid URL {0}")]
    Url(String),
}

impl ClientError {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.error.code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<Sensitive>,
    /// Retries of a `POST` that got no answer or 503, with the same `Idempotency-Key`.
    retries: u32,
}

/// The header that makes a retried `POST` safe (the server keeps the first answer 24 h).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `base` (e.g. `https://127.0.0.1:8443`) with the given TLS settings.
    pub fn new(base: &str, tls: rustls::ClientConfig) -> Result<Client, ClientError> {
        Client::with_timeout(base, tls, Duration::from_secs(60))
    }

    pub fn with_timeout(base: &str, tls: rustls::ClientConfig, timeout: Duration) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            return Err(ClientError::Url(format!("{base}: Rampart speaks HTTPS only")));
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .user_agent(concat!("rampart/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Transport {
                url: base.clone(),
                source,
            })?;
        Ok(Client {
            base,
            http,
            token: None,
            retries: 0,
        })
    }

    /// A client that trusts only the CA in `ca_pem`.
    pub fn with_ca(base: &str, ca_pem: &[u8]) -> Result<Client, ClientError> {
        Client::new(base, tls::client_config(ca_pem, None)?)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn with_token(mut self, token: Sensitive) -> Client {
        self.token = Some(token);
        self
    }

    pub fn token(&self) -> Option<&Sensitive> {
        self.token.as_ref()
    }

    /// Retries a `POST` up to `n` times (after 0.5 s, 1 s, 2 s...) when it got no answer or
    /// 503. Every `POST` then carries an `Idempotency-Key`, the same on each attempt, so a
    /// retry of a call that did take effect gets its first answer instead of a duplicate.
    pub fn with_retries(mut self, n: u32) -> Client {
        self.retries = n;
        self
    }

    /// Sends a request and decodes the JSON answer; API errors become [`ClientError::Api`].
    pub async fn request<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        let url = response.url().to_string();
        response
            .json::<T>()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }

    /// Sends a request and returns the raw response after mapping error statuses.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ClientError> {
        let key = (method == Method::POST && self.retries > 0).then(|| uuid::Uuid::new_v4().to_string());
        self.send_with_key(method, path, body, key.as_deref()).await
    }

    /// As [`Client::send`] with the given `Idempotency-Key` (none: no header, no retry).
    pub async fn send_with_key<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        key: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut attempt = 0;
        let response = loop {
            let mut req = self.http.request(method.clone(), &url);
            if let Some(token) = &self.token {
                req = req.bearer_auth(token.expose());
            }
            if let Some(key) = &key {
                req = req.header(IDEMPOTENCY_KEY, *key);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let sent = req.send().await;
            let retry = key.is_some()
                && attempt < self.retries
                && sent
                    .as_ref()
                    .map_or(true, |r| r.status() == StatusCode::SERVICE_UNAVAILABLE);
            if !retry {
                break sent.map_err(|source| ClientError::Transport {
                    url: url.clone(),
                    source,
                })?;
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
            attempt += 1;
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        match response.json::<ErrorBody>().await {
            Ok(body) => Err(ClientError::Api { status, body }),
            Err(_) => Err(ClientError::Unexpected { status, url }),
        }
    }

    /// PUTs a file's bytes as `application/octet-stream`, streamed from disk (image data can
    /// be gigabytes: nothing is held in memory), with `timeout` for the whole transfer.
    pub async fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &std::path::Path,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| ClientError::Url(format!("{}: {e}", file.display())))?;
        let len = f
            .metadata()
            .await
            .map_err(|e| ClientError::Url(format!("{}: {e}", file.display())))?
            .len();
        let mut req = self
            .http
            .put(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::from(f));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        let response = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = response.status();
        if !status.is_success() {
            return match response.json::<ErrorBody>().await {
                Ok(body) => Err(ClientError::Api { status, body }),
                Err(_) => Err(ClientError::Unexpected { status, url }),
            };
        }
        response
            .json::<T>()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health").await
    }

    pub async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, ClientError> {
        self.post("/v1/auth/tokens", req).await
    }

    /// Logs in and returns a client that carries the new token.
    pub async fn login_as(&self, username: &str, password: &str) -> Result<(Client, TokenResponse), ClientError> {
        let response = self
            .login(&LoginRequest {
                username: username.into(),
                password: Some(Sensitive::new(password)),
                domain: None,
                project: None,
                totp: None,
                application_credential: None,
            })
            .await?;
        Ok((self.clone().with_token(response.token.clone()), response))
    }

    pub async fn change_password(&self, req: &PasswordChange) -> Result<(), ClientError> {
        self.send(Method::POST, "/v1/auth/password", Some(req))
            .await
            .map(|_| ())
    }

    pub async fn current_token(&self) -> Result<TokenInfo, ClientError> {
        self.get("/v1/auth/tokens/current").await
    }

    pub async fn logout(&self) -> Result<(), ClientError> {
        self.send::<()>(Method::DELETE, "/v1/auth/tokens/current", None)
            .await
            .map(|_| ())
    }

    pub async fn nodes(&self) -> Result<List<Node>, ClientError> {
        self.get("/v1/nodes").await
    }

    pub async fn create_join_token(&self, req: &JoinTokenCreate) -> Result<JoinToken, ClientError> {
        self.post("/v1/nodes/join-tokens", req).await
    }

    pub async fn ca_certificate(&self) -> Result<String, ClientError> {
        let response = self.send::<()>(Method::GET, "/v1/ca/certificate", None).await?;
        let url = response.url().to_string();
        response
            .text()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }

    // Agent protocol (mTLS).

    pub async fn agent_join(&self, req: &JoinRequest) -> Result<JoinResponse, ClientError> {
        self.post("/agent/v1/join", req).await
    }

    /// Long-polls for a generation newer than `after`; `None` when the wait ended without one.
    pub async fn agent_config(&self, after: i64) -> Result<Option<NodeConfig>, ClientError> {
        let response = self
            .send::<()>(Method::GET, &format!("/agent/v1/config?after={after}"), None)
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let url = response.url().to_string();
        response
            .json()
            .await
            .map(Some)
            .map_err(|source| ClientError::Transport { url, source })
    }

    pub async fn agent_status(&self, status: &AgentStatus) -> Result<StatusAck, ClientError> {
        self.request(Method::PUT, "/agent/v1/status", Some(status)).await
    }

    /// The passphrase of a volume placed on this node (mTLS; any other node gets 404).
    pub async fn agent_volume_passphrase(
        &self,
        volume: uuid::Uuid,
    ) -> Result<crate::storage::VolumePassphrase, ClientError> {
        self.request::<(), _>(Method::POST, &format!("/agent/v1/volumes/{volume}/passphrase"), None)
            .await
    }
}
