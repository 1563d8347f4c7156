//! Loading the model in the background: `$/progress` while it loads, the engine check in a
//! child process (`probe::load_checked_engine`), the engine handed to the scheduler, and a
//! message naming the reason when it fails (a running engine and its settings stay then).
//! An engine whose thread crashes is reported and started again, once until the settings load
//! another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tower_lsp_server::ls_types::*;
use tower_lsp_server::Client;

use crate::config::Config;
use crate::probe::{self, LoadFailure};
use crate::scheduler::{EngineState, Scheduler};
use crate::sync::MutexExt;

/// Starts engines for the server; cloned into the task that hears of crashes.
#[derive(Clone)]
pub(super) struct Loader {
    scheduler: Arc<Scheduler>,
    client: Client,
    /// Incremented on every engine (re)load, so a slow load cannot overwrite a newer one.
    generation: Arc<AtomicU64>,
    /// Engine loads started (for `ghostline/stats`).
    pub(super) loads: Arc<AtomicU64>,
    pub(super) with_progress: Arc<AtomicBool>,
    /// The settings the running engine was loaded with, to go back to when a new model fails.
    loaded_config: Arc<Mutex<Option<Arc<Config>>>>,
    /// Whether the engine was started again after a crash since the settings last loaded one.
    restarted_after_crash: Arc<AtomicBool>,
}

impl Loader {
    pub(super) fn new(scheduler: Arc<Scheduler>, client: Client) -> Loader {
        Loader {
            scheduler,
            client,
            generation: Arc::default(),
            loads: Arc::default(),
            with_progress: Arc::default(),
            loaded_config: Arc::default(),
            restarted_after_crash: Arc::default(),
        }
    }

    /// Loads the engine the settings name (at start, or after they changed).
    pub(super) fn load_configured(&self) {
        self.restarted_after_crash.store(false, Ordering::SeqCst);
        self.load();
    }

    /// Reports each engine crash the scheduler hears of, and starts the engine again the first
    /// time; a second crash leaves completions off until the settings or the server change.
    pub(super) fn restart_after_crashes(&self) {
        let Some(mut crashes) = self.scheduler.listen_for_crashes() else { return };
        let loader = self.clone();
        tokio::spawn(async move {
            while let Some(why) = crashes.recv().await {
                let again = loader.restarted_after_crash.swap(true, Ordering::SeqCst);
                let message = if again {
                    format!("Ghostline's engine crashed again ({why}); completions are off until the settings change or the editor restarts the server.")
                } else {
                    format!("Ghostline's engine crashed ({why}); starting it again.")
                };
                tracing::error!("{message}");
                if !again {
                    loader.load();
                }
                loader.client.show_message(MessageType::ERROR, message).await;
            }
        });
    }

    /// Loads the configured model in the background, reporting progress, and hands the engine
    /// to the scheduler. Until then completion requests are answered empty at once.
    fn load(&self) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.loads.fetch_add(1, Ordering::SeqCst);
        let engine_generation = self.generation.clone();
        let scheduler = self.scheduler.clone();
        let client = self.client.clone();
        let config = scheduler.config();
        let loaded_config = self.loaded_config.clone();
        let with_progress = self.with_progress.load(Ordering::SeqCst);
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
                    *loaded_config.locked() = Some(config);
                    if let Some(progress) = progress {
                        progress.finish_with_message(message).await;
                    }
                }
                Err(failure) => {
                    tracing::error!(%failure, "model failed to load");
                    let failure = Arc::new(failure);
                    // State and settings change before any `.await`, so a newer load that
                    // starts meanwhile is never overwritten by this one.
                    let previous = loaded_config.locked().clone();
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
