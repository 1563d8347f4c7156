//! Loading the model in the background: `$/progress` while it loads, the engine check in a
//! child process (`probe::load_checked_engine`), the engine handed to the scheduler, and a
//! message naming the reason when it fails (a running engine and its settings stay then).

use std::sync::atomic::Ordering;

use tower_lsp_server::ls_types::*;

use super::Backend;
use crate::probe::{self, LoadFailure};
use crate::scheduler::EngineState;

impl Backend {
    /// Loads the configured model in the background, reporting progress, and hands the engine
    /// to the scheduler. Until then completion requests are answered empty at once.
    pub(super) fn load_engine(&self) {
        let generation = self.engine_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.engine_loads.fetch_add(1, Ordering::SeqCst);
        let engine_generation = self.engine_generation.clone();
        let scheduler = self.scheduler.clone();
        let client = self.client.clone();
        let config = scheduler.config();
        let loaded_config = self.loaded_config.clone();
        let with_progress = self.client_has_work_done_progress.load(Ordering::SeqCst);
        // A running engine keeps serving until its replacement is ready, and stays if the
        // replacement fails.
        let previous_ready = matches!(scheduler.engine_state(), EngineState::Ready(_));
        if !previous_ready {
            scheduler.set_engine_state(EngineState::Loading);
        }
        tokio::spawn(async move {
            let token = NumberOrString::String(format!("ghostline-load-{generation}"));
            let progress = if with_progress
                && client
                    .send_request::<request::WorkDoneProgressCreate>(WorkDoneProgressCreateParams { token: token.clone() })
                    .await
                    .is_ok()
            {
                Some(client.progress(token, "Ghostline").with_message(format!("loading model {}", config.model)).begin().await)
            } else {
                None
            };
            let model = config.model.clone();
            let load_config = config.clone();
            let loaded = tokio::task::spawn_blocking(move || probe::load_checked_engine(&load_config))
                .await
                .unwrap_or_else(|err| Err(LoadFailure::LoaderPanicked(err.to_string())));
            if engine_generation.load(Ordering::SeqCst) != generation {
                return;
            }
            match loaded {
                Ok(engine) => {
                    let message = format!("model {} ready ({:.0} ms)", engine.info().name, engine.info().load_ms);
                    tracing::info!("{message}");
                    scheduler.set_engine_state(EngineState::Ready(engine));
                    *loaded_config.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(config);
                    if let Some(progress) = progress {
                        progress.finish_with_message(message).await;
                    }
                }
                Err(failure) => {
                    tracing::error!(%failure, "model failed to load");
                    let failure = std::sync::Arc::new(failure);
                    // State and settings change before any `.await`, so a newer load that
                    // starts meanwhile is never overwritten by this one.
                    let previous = loaded_config.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                    let kept = match (&previous, scheduler.engine_state()) {
                        (Some(previous), EngineState::Ready(_)) if previous_ready => {
                            // Back to the settings of the engine that keeps running.
                            let mut current = (*scheduler.config()).clone();
                            current.set_engine_settings(previous);
                            scheduler.set_config(current);
                            Some(previous.model.clone())
                        }
                        _ => {
                            scheduler.set_engine_state(EngineState::Failed(failure.clone()));
                            None
                        }
                    };
                    if let Some(progress) = progress {
                        progress.finish_with_message("model failed to load").await;
                    }
                    let consequence = match &kept {
                        Some(previous) => format!("keeping model `{previous}`"),
                        None => String::from("completions are off until then"),
                    };
                    let message = if failure.is_engine_check() {
                        format!("Ghostline's engine cannot run model `{model}` on this machine: {failure}. `ghostline doctor` repeats this check; {consequence}.")
                    } else {
                        format!("Ghostline could not load model `{model}`: {failure}. Set `model` in the Ghostline settings to a registry name (`ghostline models list`) or a .gguf path; {consequence}.")
                    };
                    client.show_message(MessageType::ERROR, message).await;
                }
            }
        });
    }

}
