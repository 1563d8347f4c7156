//! Jobs to requests: the dispatcher thread, a thread per streaming request (at most
//! `maxInFlight` at once, each holding a slot), and the embedded fallback that answers while the
//! server fails.

use super::*;
use super::wire::*;
use crate::sync::MutexExt;

pub(super) struct Dispatcher {
    pub(super) config: Arc<RemoteConfig>,
    pub(super) agent: ureq::Agent,
    pub(super) fallback: Option<Fallback>,
    pub(super) latest_job_id: Arc<AtomicU64>,
    pub(super) status: Arc<Status>,
    pub(super) in_flight: Arc<(Mutex<usize>, Condvar)>,
}

impl Dispatcher {
    pub(super) fn run(self, commands: mpsc::Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            match command {
                Command::Tokenize(text, reply) => match &self.fallback {
                    Some(fallback) => {
                        if let Ok(tokens) = fallback.local.tokenize_timed(&text) {
                            let _ = reply.send(tokens);
                        }
                    }
                    // No vocabulary here: the caller hears that the engine cannot tokenize.
                    None => drop(reply),
                },
                Command::Run(job) => self.dispatch(job),
            }
        }
    }

    pub(super) fn dispatch(&self, job: JobRequest) {
        let interrupted = |job: &JobRequest| job.interruption(&self.latest_job_id);
        if let Some(fallback) = &self.fallback {
            fallback.cancel_running();
        }
        if self.status.remote_usable(&self.config) || self.fallback.is_none() {
            // Wait for a streaming slot; a superseded job gives up its place at once.
            let (count, freed) = &*self.in_flight;
            let mut in_flight = count.locked();
            while *in_flight >= self.config.max_in_flight {
                if let Some(reason) = interrupted(&job) {
                    job.progress.send_modify(|progress| progress.done = Some(Ok(ended_early(reason))));
                    return;
                }
                in_flight = freed.wait_timeout(in_flight, Duration::from_millis(5)).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
            }
            *in_flight += 1;
            drop(in_flight);
            let request = Request {
                config: self.config.clone(),
                agent: self.agent.clone(),
                latest_job_id: self.latest_job_id.clone(),
                status: self.status.clone(),
                slot: Some(InFlightSlot(self.in_flight.clone())),
                fallback: self.fallback.clone(),
            };
            // A thread that cannot start drops its request, and the slot with it.
            let spawned = std::thread::Builder::new().name("ghostline-request".to_string()).spawn(move || request.run(job));
            if let Err(err) = spawned {
                tracing::error!(%err, "cannot start a request thread");
            }
        } else if let Some(fallback) = &self.fallback {
            self.status.fallback_jobs.fetch_add(1, Ordering::Relaxed);
            fallback.run(job, self.latest_job_id.clone());
        }
    }
}

/// One request's place among the `maxInFlight` that may stream at once: given back when the
/// request ends, however it ends (a panic included).
pub(super) struct InFlightSlot(Arc<(Mutex<usize>, Condvar)>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let (count, freed) = &*self.0;
        let mut count = count.locked();
        *count = count.saturating_sub(1);
        freed.notify_all();
    }
}

/// The test fault (`crate::engine::test_fault`) that makes a remote request's thread panic.
pub const PANIC_MARKER: &str = "ghostline-test-fault: panic in a request";

/// One request's thread: streams the answer into the job's progress.
pub(super) struct Request {
    pub(super) config: Arc<RemoteConfig>,
    pub(super) agent: ureq::Agent,
    pub(super) latest_job_id: Arc<AtomicU64>,
    pub(super) status: Arc<Status>,
    pub(super) slot: Option<InFlightSlot>,
    pub(super) fallback: Option<Fallback>,
}

impl Request {
    pub(super) fn run(mut self, job: JobRequest) {
        // A panic while streaming fails this job with its message; the slot is given back below.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::engine::test_fault(PANIC_MARKER, &job.prompt);
            self.stream(&job)
        }))
        .unwrap_or_else(|payload| {
            let why = crate::engine::panic_message(payload.as_ref());
            tracing::error!(%why, "a remote request panicked");
            Err(RemoteError::Panicked(why))
        });
        // The next request may stream while this one's fallback runs.
        drop(self.slot.take());
        match result {
            Ok(completion) => {
                self.status.succeeded();
                job.progress.send_modify(|progress| progress.done = Some(Ok(completion)));
            }
            Err(err) => {
                self.status.failed(&err);
                if self.fallback.is_some() {
                    Status::watch_health(&self.status, &self.config, &self.agent);
                }
                if let Some(reason) = job.interruption(&self.latest_job_id) {
                    // Nobody waits for this job any more.
                    job.progress.send_modify(|progress| progress.done = Some(Ok(ended_early(reason))));
                    return;
                }
                match &self.fallback {
                    Some(fallback) => {
                        self.status.fallback_jobs.fetch_add(1, Ordering::Relaxed);
                        // Whatever the server sent before it failed is dropped: the embedded
                        // model answers the whole job.
                        job.progress.send_modify(|progress| {
                            progress.text.clear();
                            progress.generated_tokens = 0;
                        });
                        fallback.run(job, self.latest_job_id.clone());
                    }
                    None => job.progress.send_modify(|progress| progress.done = Some(Err(EngineError::Remote(err.to_string())))),
                }
            }
        }
    }

    pub(super) fn body(&self, job: &JobRequest, prompt: &str) -> Value {
        let max_tokens = job.params.max_tokens;
        match self.config.api {
            // `timings_per_token`: every piece carries the prompt's counts, so a stream closed
            // early (a stop rule, a newer key) still tells how many prompt tokens the server
            // decoded and how fast: the arrival's first window is sized by that speed.
            RemoteApi::LlamaServer => json!({
                "prompt": prompt, "n_predict": max_tokens, "stream": true, "cache_prompt": true,
                "temperature": 0.0, "top_k": 1, "samplers": ["top_k"], "timings_per_token": true,
            }),
            RemoteApi::OpenAi => {
                let mut body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": true});
                if let Some(model) = &self.config.model {
                    body["model"] = json!(model);
                }
                body
            }
            RemoteApi::Ollama => json!({
                "model": self.config.model, "prompt": prompt, "raw": true, "stream": true,
                "options": {"temperature": 0.0, "top_k": 1, "num_predict": max_tokens},
            }),
        }
    }

    /// The body of an `/infill` request: the prompt's parts, and the text before the cursor on
    /// its line (with the forced prefix) as `prompt`, which llama-server puts at the end of the
    /// prefix.
    pub(super) fn infill_body(&self, job: &JobRequest, parts: &InfillParts, middle: &str) -> Value {
        let extra: Vec<Value> = parts.extra.iter().map(|(filename, text)| json!({"filename": filename, "text": text})).collect();
        json!({
            "input_prefix": parts.prefix, "input_suffix": parts.suffix, "input_extra": extra, "prompt": middle,
            "n_predict": job.params.max_tokens, "stream": true, "cache_prompt": true,
            "temperature": 0.0, "top_k": 1, "samplers": ["top_k"], "timings_per_token": true,
        })
    }

    pub(super) fn stream(&self, job: &JobRequest) -> Result<Completion, RemoteError> {
        let start = Instant::now();
        let url = self.config.endpoint();
        // The forced prefix is part of the suggestion: the server continues after it.
        let forced = &job.params.forced_prefix;
        let ends_in_text = matches!(job.prompt.pieces.last(), Some(Piece::Text(_)));
        let heal = job.params.token_healing && forced.is_empty() && ends_in_text;
        // Token healing in text: the prompt's partial last token is left for the model to write
        // (the suggestion must start with it; it is not shown).
        let (body, healed) = if self.config.infill {
            let parts = InfillParts::of(&job.prompt).ok_or_else(|| RemoteError::Protocol { url: url.clone(), reason: "a prompt without fill-in-the-middle parts cannot go to /infill".into() })?;
            // No healing here: the server puts the line's start at the end of the prefix and
            // tokenizes it itself (a partial token left out made the model write another one:
            // `3.14159 *` then `*` instead of ` radius`).
            let middle = format!("{}{forced}", parts.middle);
            (self.infill_body(job, &parts, &middle), String::new())
        } else {
            let mut prompt = format!("{}{forced}", self.config.template.render(&job.prompt));
            let healed = if heal { prompt.split_off(prompt.len() - healed_len(&prompt)) } else { String::new() };
            (self.body(job, &prompt), healed)
        };
        let mut request = self.agent.post(&url).set("Content-Type", "application/json");
        if let Some(variable) = &self.config.api_key_env {
            let key = std::env::var(variable).map_err(|_| RemoteError::MissingKey(variable.clone()))?;
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let mut completion = ended_early(StopReason::MaxTokens);
        let response = match request.send_string(&body.to_string()) {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let body: String = response.into_string().unwrap_or_default().chars().take(300).collect();
                return Err(RemoteError::Status { url, status, body });
            }
            Err(ureq::Error::Transport(transport)) => {
                let reason = transport.to_string();
                if reason.contains("timed out") {
                    return Err(RemoteError::TimedOut { url, timeout_ms: self.config.timeout_ms });
                }
                return Err(RemoteError::Unreachable { url, reason });
            }
        };
        let mut reader = std::io::BufReader::new(response.into_reader());
        let mut text = forced.clone();
        // What the server wrote, until it has written the healed text.
        let mut unhealed = String::new();
        let mut line = String::new();
        let mut first_piece = true;
        let stop_rules = || job.params.late_stop.as_ref().and_then(|late| late.get()).unwrap_or_else(|| job.params.stop.clone());
        loop {
            if let Some(reason) = job.interruption(&self.latest_job_id) {
                completion.stop_reason = reason;
                break;
            }
            line.clear();
            let read = std::io::BufRead::read_line(&mut reader, &mut line).map_err(|err| {
                if matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                    RemoteError::TimedOut { url: url.clone(), timeout_ms: self.config.timeout_ms }
                } else {
                    RemoteError::cut(&url, completion.generated_tokens, &format!(" ({err})"))
                }
            })?;
            if read == 0 {
                // Every flavour ends its stream with a last piece that says so (llama-server's
                // `stop`, OpenAI's `finish_reason` or `[DONE]`, Ollama's `done`): a stream that
                // ends without one was cut (the server died or a proxy dropped it), and its text
                // may stop anywhere.
                return Err(RemoteError::cut(&url, completion.generated_tokens, ""));
            }
            let Some(piece) = parse_line(self.config.api, &line).map_err(|reason| RemoteError::Protocol { url: url.clone(), reason })? else { continue };
            if first_piece {
                first_piece = false;
                self.status.first_piece(start.elapsed());
                completion.prompt_ms = ms(start.elapsed());
            }
            if !piece.text.is_empty() {
                completion.generated_tokens += 1;
                if unhealed.len() < healed.len() {
                    unhealed.push_str(&piece.text);
                    if unhealed.len() >= healed.len() || piece.done.is_some() {
                        match unhealed.strip_prefix(healed.as_str()) {
                            Some(rest) => text.push_str(rest),
                            // The model went another way than the text the user typed.
                            None => {
                                completion.stop_reason = StopReason::StopRule;
                                break;
                            }
                        }
                    }
                } else {
                    text.push_str(&piece.text);
                }
            }
            if let Some(counts) = piece.counts {
                completion.prompt_tokens = counts.prompt_tokens;
                completion.reused_tokens = counts.reused_tokens;
                completion.decoded_tokens = counts.prompt_tokens.saturating_sub(counts.reused_tokens);
                if counts.generated_tokens > 0 {
                    completion.generated_tokens = counts.generated_tokens;
                }
            }
            if let Some(cut) = stop_rules().check(&text) {
                text.truncate(cut);
                completion.stop_reason = StopReason::StopRule;
                job.publish(&text, completion.generated_tokens);
                break;
            }
            job.publish(&text, completion.generated_tokens);
            if let Some(reason) = piece.done {
                completion.stop_reason = reason;
                break;
            }
            // A server that does not keep to the token limit is held to it here.
            if completion.generated_tokens >= job.params.max_tokens {
                completion.stop_reason = StopReason::MaxTokens;
                break;
            }
        }
        // Dropping the reader closes a stream that is still running: the server stops there.
        completion.text = text;
        completion.generation_ms = ms(start.elapsed()) - completion.prompt_ms;
        Ok(completion)
    }
}

/// The embedded engine that answers for the server, and the cancel flag of the job it runs for it.
#[derive(Clone)]
pub(super) struct Fallback {
    pub(super) local: Engine,
    pub(super) running: Arc<Mutex<Option<Arc<AtomicBool>>>>,
}

impl Fallback {
    /// A newer job arrived: the job the embedded engine runs for an older one is over.
    pub(super) fn cancel_running(&self) {
        if let Some(cancel) = self.running.locked().take() {
            cancel.store(true, Ordering::SeqCst);
        }
    }

    /// Runs a job on the embedded engine and copies its progress into the job's, cancelling it
    /// when the job is cancelled or superseded.
    pub(super) fn run(&self, job: JobRequest, latest_job_id: Arc<AtomicU64>) {
        let inner = self.local.submit(job.prompt.clone(), job.params.clone());
        *self.running.locked() = Some(inner.cancel.clone());
        let spawned = std::thread::Builder::new().name("ghostline-fallback".to_string()).spawn(move || {
            let mut progress = inner.subscribe();
            loop {
                let snapshot = progress.borrow_and_update().clone();
                let done = snapshot.done.is_some();
                job.progress.send_modify(|outer| *outer = snapshot);
                if done {
                    return;
                }
                if job.interruption(&latest_job_id).is_some() {
                    inner.cancel();
                }
                // The embedded engine publishes after every token and when the job ends.
                if futures::executor::block_on(progress.changed()).is_err() {
                    job.progress.send_modify(|outer| outer.done = Some(Err(EngineError::Stopped)));
                    return;
                }
            }
        });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the fallback's thread");
        }
    }
}
