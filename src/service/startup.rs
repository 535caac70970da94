//! The start-up check of `run`: one call to each API with the configured credentials, within
//! [`STARTUP_CHECK`]. Wrong credentials or settings (see [`crate::http::policy::is_wrong_setting`])
//! fail the start; an API that cannot be reached now does not (logged; the cycles retry).

use crate::http::ApiError;
use crate::http::policy::is_wrong_setting;
use crate::ports::ApiMeter;
use crate::service::wiring::LiveSyncer;
use std::time::{Duration, Instant};

/// How long the start-up check may take before the daemon starts anyway.
pub const STARTUP_CHECK: Duration = Duration::from_secs(20);

/// Checks the credentials: Kommo's token with `GET /api/v4/account`, ChatApp's login or stored
/// token with the employee list.
pub async fn check_credentials(syncer: &LiveSyncer) -> Result<(), ApiError> {
    let deadline = Some(Instant::now() + STARTUP_CHECK);
    syncer.kommo.set_deadline(deadline);
    syncer.chatapp.set_deadline(deadline);
    let r = async {
        syncer.kommo.filters_enabled().await?;
        syncer.chatapp.employees().await?;
        Ok(())
    }
    .await;
    syncer.kommo.set_deadline(None);
    syncer.chatapp.set_deadline(None);
    match r {
        Err(e) if !is_wrong_setting(&e) => {
            tracing::warn!(error = %e, "could not check the credentials now; starting anyway (the cycles retry)");
            Ok(())
        }
        r => r,
    }
}
