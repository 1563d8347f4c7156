//! An engine without llama.cpp for the unit tests of the code around it.

use super::*;

/// A job as a scripted engine receives it: the test decides what it produces.
#[cfg(test)]
pub struct ScriptedJob {
    pub id: u64,
    pub prompt: Prompt,
    pub params: GenerateParams,
    pub cancelled: Arc<AtomicBool>,
    pub progress: watch::Sender<Progress>,
}

#[cfg(test)]
impl Engine {
    /// An engine without llama.cpp, for unit tests of the code around it: each submitted job
    /// arrives on the returned channel, and the test publishes its progress. The handle is the
    /// real one (a test of the scheduler exercises the same submission and supersession ids);
    /// only the thread behind it is replaced.
    pub fn scripted(info: ModelInfo) -> (Engine, mpsc::Receiver<ScriptedJob>) {
        let (sender, receiver) = mpsc::channel::<worker::Command>();
        let (jobs_sender, jobs) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(command) = receiver.recv() {
                if let worker::Command::Run(job) = command {
                    let scripted = ScriptedJob { id: job.id, prompt: job.prompt, params: job.params, cancelled: job.cancel, progress: job.progress };
                    if jobs_sender.send(scripted).is_err() {
                        return;
                    }
                }
            }
        });
        (Engine { sender, latest_job_id: Arc::new(AtomicU64::new(0)), info: Arc::new(info), remote: None, crash: Arc::new(OnceLock::new()) }, jobs)
    }

    /// `scripted`, taken for a remote backend by the code around it (`is_remote`); nothing is
    /// sent anywhere.
    pub fn scripted_remote(info: ModelInfo) -> (Engine, mpsc::Receiver<ScriptedJob>) {
        let config = remote::RemoteConfig {
            api: remote::RemoteApi::LlamaServer,
            url: "http://127.0.0.1:9".into(),
            model: None,
            template: remote::FimTemplate::named("qwen").expect("a named template"),
            infill: false,
            api_key_env: None,
            timeout_ms: 1000,
            fallback_local: false,
            slow_ms: 1000,
            max_in_flight: 1,
            context_tokens: info.context_tokens,
        };
        let (mut engine, jobs) = Engine::scripted(info);
        engine.remote = Some((Arc::new(config), Arc::new(remote::Status::default())));
        (engine, jobs)
    }
}
