//! The forwarding loop: on the reconciler-lease holder with forwarding enabled it runs the
//! RFC 5425 forwarder and moves new records and checkpoints into its persistent queue.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rampart_audit::formats::{Format, SyslogOptions};
use rampart_audit::forward::{Forwarder, pump};
use rampart_common::error::ErrorChain;

use super::settings::{ForwardingSettings, load_forwarding};
use super::{Audit, Running};
use crate::state::AppState;

/// The syslog header fields of this controller.
fn syslog_options(audit: &Audit, format: Format) -> SyslogOptions {
    SyslogOptions {
        hostname: audit.hostname.clone(),
        procid: Some(std::process::id()),
        enterprise_id: audit.config.syslog_enterprise_id,
        payload: format,
        ..SyslogOptions::default()
    }
}

/// The forwarding loop of every controller: on the reconciler-lease holder with forwarding
/// enabled it runs the forwarder and moves new records and checkpoints into its queue.
pub fn spawn_forwarding(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen_generation = 0;
        let mut settings = ForwardingSettings::default();
        let mut failed_config: Option<ForwardingSettings> = None;
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = state.audit.wake_pump.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let generation = state.audit.settings_generation.load(Ordering::SeqCst);
            if generation != seen_generation {
                match load_forwarding(&state.db).await {
                    Ok(s) => {
                        settings = s;
                        seen_generation = generation;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the forwarding settings");
                        continue;
                    }
                }
            }
            let wanted = settings.enabled && state.audit.is_leader();
            let mut running = state.audit.running.lock().expect("forwarder lock").take();
            if running.as_ref().is_some_and(|r| !wanted || r.settings != settings)
                && let Some(r) = running.take()
            {
                tracing::info!("log forwarding stopped");
                r.forwarder.stop();
            }
            if wanted && running.is_none() && failed_config.as_ref() != Some(&settings) {
                match settings.forwarder_config() {
                    Ok(mut cfg) => {
                        cfg.idle_probe = Some(Duration::from_secs(state.audit.config.forward_probe_interval_s.max(1)));
                        cfg.backoff_max = Duration::from_secs(state.audit.config.forward_retry_max_s.max(1));
                        match Forwarder::start(state.audit.queue.clone(), cfg, state.clock.clone()) {
                            Ok(f) => {
                                tracing::info!(address = %settings.address, "log forwarding started");
                                failed_config = None;
                                running = Some(Running {
                                    settings: settings.clone(),
                                    forwarder: f,
                                });
                            }
                            Err(e) => {
                                tracing::error!(error = %ErrorChain(&e), "log forwarding cannot start");
                                failed_config = Some(settings.clone());
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "log forwarding settings are unusable");
                        failed_config = Some(settings.clone());
                    }
                }
            }
            let active = running.is_some();
            *state.audit.running.lock().expect("forwarder lock") = running;
            if active {
                let opts = syslog_options(&state.audit, settings.format);
                loop {
                    match pump(&state.audit.store, &state.audit.queue, &opts, 1000).await {
                        Ok(n) if n >= 1000 => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %ErrorChain(&e), "cannot queue audit records for forwarding");
                            break;
                        }
                    }
                }
            }
        }
        state.audit.stop_forwarding();
    })
}
