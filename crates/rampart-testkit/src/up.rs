//! Taking over a real `rampart up` started by an end-to-end test or a benchmark: wait until it
//! answers with its nodes ready, then do what the README tells a new operator to do with the
//! bootstrap admin (new password, TOTP enrolment, login).

use std::path::Path;
use std::time::{Duration, Instant};

use rampart_api::{Client, PasswordChange};
use rampart_common::Sensitive;
use uuid::Uuid;

use crate::MfaUser;

/// The admin of a freshly started `rampart up`.
pub struct UpAdmin {
    pub anon: Client,
    pub admin: Client,
    /// The bootstrap admin's own project, `admin`.
    pub project: Uuid,
}

/// Waits (up to `wait`) until `url` is healthy with `ready` nodes, trusting the CA in
/// `data_dir`, then sets the admin's `password` from the bootstrap file, enrols TOTP and logs in.
pub async fn take_over(url: &str, data_dir: &Path, ready: u64, password: &str, wait: Duration) -> UpAdmin {
    let deadline = Instant::now() + wait;
    let anon = loop {
        if let Ok(pem) = std::fs::read(data_dir.join("ca.pem"))
            && let Ok(c) = Client::with_ca(url, &pem)
            && let Ok(h) = c.health().await
            && h.nodes.ready >= ready
        {
            break c;
        }
        assert!(Instant::now() < deadline, "{url} not healthy with {ready} ready nodes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let bootstrap = std::fs::read_to_string(data_dir.join("bootstrap-admin-password")).expect("bootstrap password");
    anon.change_password(&PasswordChange {
        username: "admin".into(),
        domain: None,
        current_password: Sensitive::new(bootstrap.trim()),
        new_password: Sensitive::new(password),
        totp: None,
    })
    .await
    .expect("first password change");
    let admin = MfaUser::enrol(&anon, "admin", password)
        .await
        .expect("TOTP enrolment")
        .login(&anon)
        .await
        .expect("admin login");
    let projects: rampart_api::List<rampart_api::Project> = admin.get("/v1/projects").await.expect("projects");
    let project = projects
        .items
        .iter()
        .find(|p| p.name == "admin")
        .expect("admin project")
        .id;
    UpAdmin { anon, admin, project }
}

/// Takes over the bootstrap security admin (`security`) of the `rampart up` in `data_dir`: sets
/// `password` from its one-time password file, enrols TOTP and logs in, as the README tells the
/// security officer to. Only a security admin appoints security admins and auditors.
pub async fn security_officer(anon: &Client, data_dir: &Path, password: &str) -> (Client, MfaUser) {
    let one_time =
        std::fs::read_to_string(data_dir.join("bootstrap-security-password")).expect("bootstrap security password");
    anon.change_password(&PasswordChange {
        username: "security".into(),
        domain: None,
        current_password: Sensitive::new(one_time.trim()),
        new_password: Sensitive::new(password),
        totp: None,
    })
    .await
    .expect("security admin's first password change");
    let mfa = MfaUser::enrol(anon, "security", password)
        .await
        .expect("security admin's TOTP enrolment");
    let client = mfa.login(anon).await.expect("security admin login");
    (client, mfa)
}
