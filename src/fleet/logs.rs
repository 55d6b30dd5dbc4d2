//! A simulated device's log collection, as the Device Update agent's diagnostics component
//! does it (`src/diagnostics_component`): when the desired `diagnosticInformation.service`
//! names a log collection it has not answered, it uploads its log with Azure's Put Blob under
//! the container grant it was given, as `DEVICE/OPERATION/adu/aduc.log`, and reports
//! `diagnosticInformation.agent = {resultCode, operationId}` (200, or the agent's failure
//! code). The device calls [`Device::answer_log_request`] after every twin read.

use super::{Device, Env, FleetError};
use crate::service::diagnostics::{DiagnosticsComponent, DiagnosticsRequest, DiagnosticsResult};

impl Device {
    /// Answers the twin's log request when there is one it has not answered yet.
    pub(super) async fn answer_log_request(&mut self, env: &Env) -> Result<(), FleetError> {
        let Some(request) = self.log_request.take() else { return Ok(()) };
        let id = request.operation_id.clone();
        // The agent skips a collection it already answered, and one without an id (it has
        // no id to report for).
        if id.is_empty() || self.logs_answered.as_deref() == Some(id.as_str()) {
            return Ok(());
        }
        let result = self.upload_log(env, &request).await;
        self.report(DiagnosticsComponent::report(&id, result).to_patch()).await?;
        self.logs_answered = Some(id);
        Ok(())
    }

    /// Uploads the device's log bundle; the result the agent would report.
    async fn upload_log(&self, env: &Env, request: &DiagnosticsRequest) -> DiagnosticsResult {
        let Some((container, query)) = request.storage_sas_url.split_once('?') else {
            return DiagnosticsResult::NoSasCredential;
        };
        let url = format!("{container}/{}/{}/adu/aduc.log?{query}", self.id, request.operation_id);
        let installed =
            self.installed.as_ref().map_or_else(|| "nothing".to_owned(), |i| i.id.to_string());
        let log = format!(
            "simulated Device Update agent log of {}\ninstalled: {installed}\nlast deployment: {}\n",
            self.id,
            self.done.as_deref().map_or("none", |d| d.lines().next().unwrap_or_default())
        );
        let sent = env.http.put(url).header("x-ms-blob-type", "BlockBlob").body(log).send().await;
        match sent {
            Ok(r) if r.status().is_success() => DiagnosticsResult::Success,
            Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => {
                DiagnosticsResult::BadCredential
            }
            _ => DiagnosticsResult::UploadFailed,
        }
    }
}
