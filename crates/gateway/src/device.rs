//! Logins without a key: the OAuth 2.0 device authorization grant (RFC 8628) run over SSH
//! keyboard-interactive, and the approvals that let the keys offered during an approved login
//! in again for a while.
//!
//! The client gets one prompt that contains the verification URL and the user code. The gateway
//! starts polling the token endpoint as soon as the code is issued and replies to the client once
//! the provider has decided. The verified token's subject must own the session.
//!
//! An approval is kept in the cluster, as a labelled ConfigMap in the session's namespace
//! owned by the SSHAccess, so that every gateway replica lets the approved keys in. It is
//! signed with the gateway's host key, which every replica shares, so a ConfigMap that anyone
//! else writes is ignored. It names the session pod's UID and the session's generation, which
//! end it when the session stops, hibernates or resumes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use api::SshAccess;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::DeviceFlowConfig;

/// Label that marks approval ConfigMaps; its value is `true`.
pub const APPROVAL_LABEL: &str = "ssh.renku.io/device-approval";
/// Label selector of approval ConfigMaps.
pub const APPROVAL_SELECTOR: &str = "ssh.renku.io/device-approval=true";
/// Label with the session name on approval ConfigMaps.
pub const SESSION_LABEL: &str = "ssh.renku.io/session";
/// Field manager of the gateway's writes.
pub const FIELD_MANAGER: &str = "renku-ssh-gateway";
/// Keys offered in one connection that an approval trusts at most.
pub const MAX_APPROVED_KEYS: usize = 8;
/// SSHSIG namespace of approval signatures, so that no other signature of the host key counts.
const SIGNATURE_NAMESPACE: &str = "approval@ssh.renku.io";

/// Number of tracked addresses or sessions above which idle counters are swept.
const SWEEP_THRESHOLD: usize = 10_000;

/// A key that an approved device login trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Namespace of the session.
    pub namespace: String,
    /// Session name.
    pub session: String,
    /// SHA-256 fingerprint of the key, `SHA256:...`.
    pub fingerprint: String,
    /// Identity-provider subject who approved.
    pub user: String,
    /// UID of the session pod at approval; the approval ends with that pod.
    pub pod_uid: String,
    /// `metadata.generation` of the AmaltheaSession at approval; hibernating or resuming the
    /// session changes it, and that ends the approval.
    pub session_generation: i64,
    /// End of the trust.
    pub expires_at: Timestamp,
    /// SSHSIG signature (PEM) by the gateway's host key over the fields above; empty until
    /// [`Approval::sign`].
    pub signature: String,
}

impl Approval {
    /// Returns the name of the ConfigMap that contains this approval.
    pub fn object_name(&self) -> String {
        let digest = Sha256::digest(self.fingerprint.as_bytes());
        let suffix: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-ssh-approval-{suffix}", self.session)
    }

    /// Returns the bytes the signature covers: every field, one per line.
    fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "renku-ssh device approval v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.namespace,
            self.session,
            self.fingerprint,
            self.user,
            self.pod_uid,
            self.session_generation,
            self.expires_at
        )
        .into_bytes()
    }

    /// Signs the approval with the gateway's host key.
    pub fn sign(&mut self, key: &PrivateKey) -> Result<(), russh::keys::ssh_key::Error> {
        let signature = key.sign(SIGNATURE_NAMESPACE, HashAlg::Sha512, &self.signed_bytes())?;
        self.signature = signature.to_pem(russh::keys::ssh_key::LineEnding::LF)?;
        Ok(())
    }

    /// Returns whether the signature is valid for `key` and covers the current fields.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let Ok(signature) = russh::keys::ssh_key::SshSig::from_pem(&self.signature) else {
            return false;
        };
        key.verify(SIGNATURE_NAMESPACE, &self.signed_bytes(), &signature)
            .is_ok()
    }

    /// Builds the ConfigMap for this approval, owned by the SSHAccess `owner`.
    pub fn to_object(&self, owner: &SshAccess) -> ConfigMap {
        let owner_reference = owner.controller_owner_ref(&()).map(|mut reference| {
            reference.controller = Some(false);
            reference
        });
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.object_name()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (APPROVAL_LABEL.to_owned(), "true".to_owned()),
                    (SESSION_LABEL.to_owned(), self.session.clone()),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    ),
                ])),
                owner_references: owner_reference.map(|reference| vec![reference]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("session".to_owned(), self.session.clone()),
                ("fingerprint".to_owned(), self.fingerprint.clone()),
                ("user".to_owned(), self.user.clone()),
                ("podUID".to_owned(), self.pod_uid.clone()),
                (
                    "sessionGeneration".to_owned(),
                    self.session_generation.to_string(),
                ),
                ("expiresAt".to_owned(), self.expires_at.to_string()),
                ("signature".to_owned(), self.signature.clone()),
            ])),
            ..ConfigMap::default()
        }
    }

    /// Reads an approval from its ConfigMap; `None` when a field is missing or malformed.
    pub fn from_object(object: &ConfigMap) -> Option<Self> {
        let data = object.data.as_ref()?;
        let field = |key: &str| data.get(key).filter(|value| !value.is_empty()).cloned();
        Some(Self {
            namespace: object.namespace()?,
            session: field("session")?,
            fingerprint: field("fingerprint")?,
            user: field("user")?,
            pod_uid: field("podUID")?,
            session_generation: field("sessionGeneration")?.parse().ok()?,
            expires_at: field("expiresAt")?.parse().ok()?,
            signature: field("signature")?,
        })
    }
}

/// A failed write of approvals.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The host key could not sign.
    #[error("cannot sign the approval: {0}")]
    Sign(#[from] russh::keys::ssh_key::Error),
    /// The API server rejected the write.
    #[error("cannot write the approval: {0}")]
    Kubernetes(#[from] kube::Error),
}

/// Signs approvals with `key` and writes them with server-side apply. Each replica reads them
/// from its watch cache.
pub async fn record_approvals(
    client: &Client,
    key: &PrivateKey,
    owner: &SshAccess,
    approvals: &mut [Approval],
) -> Result<(), RecordError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for approval in approvals.iter_mut() {
        approval.sign(key)?;
        let api = Api::<ConfigMap>::namespaced(client.clone(), &approval.namespace);
        api.patch(
            &approval.object_name(),
            &params,
            &Patch::Apply(&approval.to_object(owner)),
        )
        .await?;
    }
    Ok(())
}

/// Sliding-window counters of device-code requests.
#[derive(Debug)]
struct Counter<K> {
    entries: HashMap<K, VecDeque<Instant>>,
    limit: u32,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn new(limit: u32) -> Self {
        Self {
            entries: HashMap::new(),
            limit,
        }
    }

    /// Returns how long `key` must wait, or `None` when it is under the limit.
    fn wait_time(&mut self, key: &K, now: Instant, window: Duration) -> Option<Duration> {
        let times = self.entries.get_mut(key)?;
        while times
            .front()
            .is_some_and(|time| now.duration_since(*time) >= window)
        {
            times.pop_front();
        }
        if times.len() < self.limit as usize {
            return None;
        }
        let oldest = *times.front()?;
        Some(window.saturating_sub(now.duration_since(oldest)))
    }

    fn record(&mut self, key: &K, now: Instant, window: Duration) {
        if self.entries.len() > SWEEP_THRESHOLD {
            self.entries.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|time| now.duration_since(*time) < window)
            });
        }
        self.entries.entry(key.clone()).or_default().push_back(now);
    }
}

/// Reason a device login could not start, with the message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Too many codes were requested from the address or for the session.
    #[error("{0}")]
    RateLimited(String),
    /// The identity provider was unreachable or rejected the request.
    #[error("{0}")]
    Unavailable(String),
}

/// A device login waiting for the user: the prompt to show and the task that polls.
pub struct PendingLogin {
    /// The prompt text with the URL and the user code.
    pub prompt: String,
    /// One line with the URL and the code, which OpenSSH prints even when it cannot prompt.
    pub summary: String,
    /// When the codes expire.
    pub expires_at: Instant,
    outcome: Option<JoinHandle<Result<oidc::VerifiedToken, String>>>,
}

impl PendingLogin {
    /// Waits for the provider's decision. `Err` contains the message for the user.
    pub async fn outcome(&mut self) -> Result<oidc::VerifiedToken, String> {
        let Some(task) = self.outcome.take() else {
            return Err("this login was already used: connect again".to_owned());
        };
        match task.await {
            Ok(result) => result,
            Err(_) => Err("the login was interrupted: connect again".to_owned()),
        }
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        if let Some(task) = &self.outcome {
            task.abort();
        }
    }
}

/// Device-flow logins of this gateway.
pub struct DeviceLogin {
    signing_key: PrivateKey,
    flow: oidc::DeviceFlow,
    verifier: Arc<oidc::TokenVerifier>,
    config: DeviceFlowConfig,
    addresses: Mutex<Counter<IpAddr>>,
    sessions: Mutex<Counter<String>>,
}

impl DeviceLogin {
    /// Creates the device login for `config`; approvals are signed with `signing_key`, the
    /// gateway's host key. Nothing is requested from the provider until the first login, so
    /// key logins work while it is down.
    pub fn new(config: DeviceFlowConfig, signing_key: PrivateKey) -> Result<Self, oidc::Error> {
        let provider = Arc::new(oidc::Provider::new(&config.issuer)?);
        let flow = oidc::DeviceFlow::new(Arc::clone(&provider), config.client_id.clone())
            .with_scope(config.scope.clone());
        let verifier = Arc::new(oidc::TokenVerifier::new(provider, config.client_id.clone()));
        Ok(Self {
            signing_key,
            flow,
            verifier,
            addresses: Mutex::new(Counter::new(config.max_codes_per_address)),
            sessions: Mutex::new(Counter::new(config.max_codes_per_session)),
            config,
        })
    }

    /// Returns the key that signs approvals.
    pub fn signing_key(&self) -> &PrivateKey {
        &self.signing_key
    }

    /// Counts a device-code request from `peer` for `session`, or returns the wait time.
    fn admit(&self, peer: IpAddr, session: &str) -> Result<(), StartError> {
        let now = Instant::now();
        let window = self.config.code_window;
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let session_key = session.to_owned();
        let wait = addresses
            .wait_time(&peer, now, window)
            .map(|wait| (wait, "from your address"))
            .or_else(|| {
                sessions
                    .wait_time(&session_key, now, window)
                    .map(|wait| (wait, "for this session"))
            });
        if let Some((wait, scope)) = wait {
            return Err(StartError::RateLimited(format!(
                "too many login codes were requested {scope}: try again in {} s, or log in \
                 with a registered key",
                wait.as_secs().max(1)
            )));
        }
        addresses.record(&peer, now, window);
        sessions.record(&session_key, now, window);
        Ok(())
    }

    /// Starts a device login for `session` from `peer`: requests the codes and starts polling.
    pub async fn start(&self, peer: IpAddr, session: &str) -> Result<PendingLogin, StartError> {
        self.admit(peer, session)?;
        let authorization = self.flow.start().await.map_err(|error| {
            warn!(issuer = self.config.issuer, %error, "device authorization request failed");
            StartError::Unavailable(format!(
                "the identity provider {} is not answering, so login without a key is not \
                 possible now: log in with a registered key, or try again later",
                self.config.issuer
            ))
        })?;
        info!(
            session,
            expires_in = authorization.expires_in.as_secs(),
            "device login started"
        );
        let prompt = prompt_text(session, &authorization);
        let summary = summary_text(session, &authorization);
        let expires_at = authorization.expires_at().into_std();
        let flow = self.flow.clone();
        let verifier = Arc::clone(&self.verifier);
        let issuer = self.config.issuer.clone();
        let outcome = tokio::spawn(async move {
            let tokens = flow
                .wait_for_token_with(&authorization, |_| {})
                .await
                .map_err(|error| poll_error_message(&error, &issuer))?;
            verifier
                .verify(tokens.access_token.expose())
                .await
                .map_err(|error| {
                    warn!(%error, "token from the device flow failed verification");
                    "the identity provider's token could not be verified, so the login was \
                     refused: connect again, and tell the platform admins if it keeps failing"
                        .to_owned()
                })
        });
        Ok(PendingLogin {
            prompt,
            summary,
            expires_at,
            outcome: Some(outcome),
        })
    }

    /// Returns the end of an approval's trust for a token that expires at `token_expiry`: the
    /// configured TTL, capped by the token's lifetime.
    pub fn approval_end(&self, token_expiry: SystemTime) -> Timestamp {
        let capped = (SystemTime::now() + self.config.approval_ttl).min(token_expiry);
        Timestamp::try_from(capped).unwrap_or_else(|_| Timestamp::now())
    }
}

/// Returns the prompt the SSH client shows: where to approve, and the code to check.
pub fn prompt_text(session: &str, authorization: &oidc::DeviceAuthorization) -> String {
    let minutes = authorization.expires_in.as_secs().div_ceil(60);
    let code = &authorization.user_code;
    let (url, action) = match &authorization.verification_uri_complete {
        Some(complete) => (complete, format!("check that it shows the code {code}")),
        None => (
            &authorization.verification_uri,
            format!("enter the code {code}"),
        ),
    };
    format!(
        "To log in to session {session} without a key, open this page in a browser:\n\n    \
         {url}\n\n{} and approve. The code expires in {minutes} min.\n\
         Press Enter here (before or after approving) to wait for the approval: ",
        capitalize(&action)
    )
}

/// Returns one line with the page and the code. OpenSSH prints it to stderr before the prompt,
/// so a client without a terminal (and without `SSH_ASKPASS`) still shows where to approve.
/// The login then goes on once someone approves.
pub fn summary_text(session: &str, authorization: &oidc::DeviceAuthorization) -> String {
    let url = authorization
        .verification_uri_complete
        .as_ref()
        .unwrap_or(&authorization.verification_uri);
    format!(
        "Login without a key to session {session}: {url} (code {})\n",
        authorization.user_code
    )
}

fn capitalize(text: &str) -> String {
    let mut characters = text.chars();
    match characters.next() {
        Some(first) => first.to_uppercase().chain(characters).collect(),
        None => String::new(),
    }
}

/// Turns a polling failure into the message for the user.
fn poll_error_message(error: &oidc::Error, issuer: &str) -> String {
    match error {
        oidc::Error::AccessDenied => {
            "the login was denied in the browser: connect again to start over".to_owned()
        }
        oidc::Error::ExpiredToken => {
            "the code expired before the login was approved: connect again for a new code"
                .to_owned()
        }
        oidc::Error::Unreachable { .. } | oidc::Error::HttpStatus { .. } => format!(
            "the identity provider {issuer} stopped answering while waiting for the approval: \
             log in with a registered key, or try again later"
        ),
        other => {
            warn!(error = %other, "device login failed");
            format!(
                "the identity provider {issuer} refused the login: connect again, and tell the \
                 platform admins if it keeps failing"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorization(complete: bool) -> oidc::DeviceAuthorization {
        oidc::DeviceAuthorization {
            device_code: oidc::Secret::new("device-code"),
            user_code: "WDJB-MJHT".to_owned(),
            verification_uri: "https://id.example.org/device".to_owned(),
            verification_uri_complete: complete
                .then(|| "https://id.example.org/device?user_code=WDJB-MJHT".to_owned()),
            expires_in: Duration::from_secs(600),
            interval: Duration::from_secs(5),
            issued_at: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn prompt_names_the_page_and_the_code() {
        let text = prompt_text("alice-1", &authorization(true));
        assert!(text.contains("https://id.example.org/device?user_code=WDJB-MJHT"));
        assert!(text.contains("Check that it shows the code WDJB-MJHT"));
        assert!(text.contains("session alice-1"));
        assert!(text.contains("10 min"));
        assert!(
            !text.contains("device-code"),
            "the device code is a credential"
        );

        let text = prompt_text("alice-1", &authorization(false));
        assert!(text.contains("https://id.example.org/device\n"));
        assert!(text.contains("Enter the code WDJB-MJHT"));
    }

    #[test]
    fn approval_survives_its_object() {
        let approval = Approval {
            namespace: "ns".to_owned(),
            session: "alice-1".to_owned(),
            fingerprint: "SHA256:abc/def+ghi".to_owned(),
            user: "user-alice".to_owned(),
            pod_uid: "pod-uid".to_owned(),
            session_generation: 3,
            expires_at: "2030-01-01T00:00:00Z".parse().expect("time"),
            signature: "unsigned".to_owned(),
        };
        let access = SshAccess::new(
            "alice-1",
            serde_json::from_value(serde_json::json!({
                "sessionRef": { "name": "alice-1" },
                "user": "user-alice",
            }))
            .expect("spec"),
        );
        let object = approval.to_object(&access);
        let name = object.metadata.name.clone().expect("name");
        assert!(name.starts_with("alice-1-ssh-approval-"));
        assert!(name.len() <= 63 + "alice-1-ssh-approval-".len());
        assert_eq!(Approval::from_object(&object), Some(approval));

        let mut broken = object;
        broken
            .data
            .as_mut()
            .expect("data")
            .insert("expiresAt".to_owned(), "soon".to_owned());
        assert_eq!(Approval::from_object(&broken), None);
    }

    #[test]
    fn codes_are_limited_per_address_and_session() {
        let login = DeviceLogin::new(
            DeviceFlowConfig {
                issuer: "http://127.0.0.1:1/realms/test".to_owned(),
                client_id: "cli".to_owned(),
                scope: "openid".to_owned(),
                approval_ttl: Duration::from_secs(3600),
                max_codes_per_address: 2,
                max_codes_per_session: 3,
                code_window: Duration::from_secs(600),
            },
            crate::certificate::generate_ed25519(),
        )
        .expect("device login");
        let one: IpAddr = "192.0.2.1".parse().expect("address");
        let two: IpAddr = "192.0.2.2".parse().expect("address");

        assert!(login.admit(one, "s1").is_ok());
        assert!(login.admit(one, "s1").is_ok());
        let refused = login
            .admit(one, "s2")
            .expect_err("third code from one address");
        assert!(
            refused.to_string().contains("from your address"),
            "{refused}"
        );

        assert!(login.admit(two, "s1").is_ok());
        let refused = login
            .admit(two, "s1")
            .expect_err("fourth code for one session");
        assert!(
            refused.to_string().contains("for this session"),
            "{refused}"
        );
        assert!(login.admit(two, "s3").is_ok());
    }

    #[test]
    fn signature_covers_every_field() {
        let key = crate::certificate::generate_ed25519();
        let other = crate::certificate::generate_ed25519();
        let mut approval = Approval {
            namespace: "ns".to_owned(),
            session: "alice-1".to_owned(),
            fingerprint: "SHA256:abc".to_owned(),
            user: "user-alice".to_owned(),
            pod_uid: "pod-uid".to_owned(),
            session_generation: 3,
            expires_at: "2030-01-01T00:00:00Z".parse().expect("time"),
            signature: String::new(),
        };
        assert!(!approval.verify(key.public_key()), "unsigned");
        approval.sign(&key).expect("sign");
        assert!(approval.verify(key.public_key()));
        assert!(!approval.verify(other.public_key()), "another key's view");

        let mut forged = approval.clone();
        forged.fingerprint = "SHA256:attacker".to_owned();
        assert!(!forged.verify(key.public_key()), "fingerprint changed");
        let mut extended = approval.clone();
        extended.expires_at = "2099-01-01T00:00:00Z".parse().expect("time");
        assert!(!extended.verify(key.public_key()), "expiry changed");
    }
}
