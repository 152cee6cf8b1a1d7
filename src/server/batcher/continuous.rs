//! Continuous batching: admission into running batches (the batcher's side) and the
//! step loop that joins and leaves sequences between decode steps (the worker's side).
//!
//! Admission reserves, for each sequence, its worst case: `num_beams` decoder rows and
//! `num_beams × max_length + input tokens` key/value-cache tokens ([`Budget`]); a
//! worker's running batch never holds more than `max_batch_size` sequences,
//! `max_batch_rows` rows and `max_batch_kv_tokens` tokens, so memory is bounded however
//! long every sequence runs. The policy ([`admit`]):
//!
//! * FIFO among those that fit: the queue is scanned in arrival order and each sequence
//!   that fits a worker's free budget joins it (the worker with the most free rows).
//! * A sequence that does not fit is passed by later, smaller ones for at most
//!   `max_bypass_ms` after it was queued; after that nothing behind it is admitted until
//!   it fits, which the running sequences' bounded lengths guarantee. So small requests
//!   cannot starve a large one, and a large one holds only its own share of rows while
//!   small ones keep joining beside it.
//! * A sequence that could never fit an empty batch is refused before it is queued
//!   (422, [`Budget::check`]).
//!
//! At each step boundary the worker encodes at most `max_join_tokens` input tokens of
//! the sequences admitted to it (at least one sequence), so that running sequences stall
//! for a bounded time; the rest join at the next boundary. Which go first
//! ([`join_order`]): those admitted more than `max_bypass_ms` ago, oldest first, then the
//! least work first (input tokens + beams × new tokens), so that a short request is not
//! held behind the encoder passes of a long one that arrived just before it.
//!
//! Shortest remaining work first, beyond an efficient step ([`step_plan`]): on a CPU a
//! decode step costs about the same per row once it holds a few dozen rows, so running
//! long work beside short work buys little throughput and slows the short work down to
//! the joint step rate. Each step therefore advances the inputs in order of remaining
//! work (rows × steps left) while it holds fewer than `min_step_rows` rows, and beyond
//! that only those within [`WORK_RATIO`]× the shortest one's remaining work; the rest
//! wait (their caches intact) while short work finishes, and a joiner with more than
//! that much work is not encoded meanwhile. Nothing waits longer than `max_bypass_ms`:
//! then it goes first. `min_step_rows = 0` (the default) turns this off: every input runs
//! every step, and joiners are encoded whatever runs. Measured on a 2-core Xeon
//! (docs/PERFORMANCE.md), pausing at 16 rows cost more than it gained, so it is opt-in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    panic_message, CancelReason, Command, Finished, Sequence, SequenceError, SequenceResult,
    Ticket, Worker, WorkerMsg,
};
use crate::generation::{GenerationConfig, Hypothesis, Joiner, RunningBatch};
use crate::server::config::Batching;

/// What a sequence holds of a running batch while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub sequences: usize,
    pub rows: usize,
    pub kv_tokens: usize,
}

impl Budget {
    /// The worst case of one sequence of `input_tokens` generated with `cfg`.
    pub fn of(input_tokens: usize, cfg: &GenerationConfig) -> Self {
        Self {
            sequences: 1,
            rows: cfg.num_beams,
            kv_tokens: cfg
                .num_beams
                .saturating_mul(cfg.max_length)
                .saturating_add(input_tokens),
        }
    }

    fn plus(self, o: Self) -> Self {
        Self {
            sequences: self.sequences + o.sequences,
            rows: self.rows + o.rows,
            kv_tokens: self.kv_tokens.saturating_add(o.kv_tokens),
        }
    }

    pub(super) fn minus(self, o: Self) -> Self {
        Self {
            sequences: self.sequences.saturating_sub(o.sequences),
            rows: self.rows.saturating_sub(o.rows),
            kv_tokens: self.kv_tokens.saturating_sub(o.kv_tokens),
        }
    }

    fn within(self, limits: &Batching) -> bool {
        self.sequences <= limits.max_batch_size
            && self.rows <= limits.max_batch_rows
            && self.kv_tokens <= limits.max_batch_kv_tokens
    }

    /// Why one sequence of this size could never join even an empty batch, if so.
    pub fn check(self, limits: &Batching) -> Result<(), String> {
        if self.rows > limits.max_batch_rows {
            return Err(format!(
                "num_beams {} needs as many decoder rows; batching.max_batch_rows is {}",
                self.rows, limits.max_batch_rows
            ));
        }
        if self.kv_tokens > limits.max_batch_kv_tokens {
            return Err(format!(
                "an input needs up to {} key/value-cache tokens (num_beams × max_length + \
                 input tokens); batching.max_batch_kv_tokens is {}",
                self.kv_tokens, limits.max_batch_kv_tokens
            ));
        }
        Ok(())
    }
}

/// Which queued sequences join which worker now (see the module documentation).
/// `used[w]` is what worker `w`'s running batch holds; the admitted sequences' budgets
/// are added to it. Returns per worker the indices of its joiners in `queue`,
/// ascending.
pub fn admit(
    queue: &VecDeque<Sequence>,
    used: &mut [Budget],
    limits: &Batching,
    now: Instant,
) -> Vec<Vec<usize>> {
    let mut joins = vec![Vec::new(); used.len()];
    let bypass = Duration::from_millis(limits.max_bypass_ms);
    for (i, seq) in queue.iter().enumerate() {
        let cost = Budget::of(seq.ids.len(), &seq.cfg);
        let best = (0..used.len())
            .filter(|&w| used[w].plus(cost).within(limits))
            .max_by_key(|&w| (limits.max_batch_rows - used[w].rows, std::cmp::Reverse(w)));
        match best {
            Some(w) => {
                used[w] = used[w].plus(cost);
                joins[w].push(i);
            }
            None if now.saturating_duration_since(seq.enqueued) >= bypass => break,
            None => {}
        }
    }
    joins
}

/// The order in which admitted sequences are encoded (see the module documentation):
/// indices into `waiting` (each: when it was queued, its input tokens, its work), at most
/// `max_join_tokens` input tokens of them, at least one.
pub fn join_order(
    waiting: &[(Instant, usize, usize)],
    limits: &Batching,
    now: Instant,
) -> Vec<usize> {
    let bypass = Duration::from_millis(limits.max_bypass_ms);
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    order.sort_by_key(|&i| {
        let (queued, _, work) = waiting[i];
        let aged = now.saturating_duration_since(queued) >= bypass;
        // Aged first (by age), then by work, then by arrival.
        (!aged, if aged { 0 } else { work }, queued)
    });
    let mut tokens = 0usize;
    let mut picked = Vec::new();
    for i in order {
        let t = waiting[i].1;
        if !picked.is_empty() && tokens + t > limits.max_join_tokens {
            break;
        }
        tokens += t;
        picked.push(i);
    }
    picked
}

/// Beyond `min_step_rows`, a step takes inputs with at most this many times the
/// remaining work of the shortest one.
pub const WORK_RATIO: usize = 4;

/// Which inputs the next decode step advances (see the module documentation), from each
/// input's (rows, remaining work, waited longer than `max_bypass_ms`).
pub fn step_plan(entries: &[(usize, usize, bool)], min_step_rows: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| {
        let (_, work, aged) = entries[i];
        (!aged, work)
    });
    let mut run = vec![false; entries.len()];
    let mut rows = 0;
    let mut shortest = None;
    for i in order {
        let (n, work, aged) = entries[i];
        let short = work <= shortest.unwrap_or(work).saturating_mul(WORK_RATIO);
        if aged || rows < min_step_rows || short {
            run[i] = true;
            rows += n;
            shortest.get_or_insert(work);
        }
    }
    run
}

/// Whether a joiner whose decoding is `work` (rows × steps) may be encoded now, next to
/// running inputs holding `rows` rows whose shortest remaining work is `shortest` (see
/// [`step_plan`]).
pub fn may_join(
    work: usize,
    aged: bool,
    rows: usize,
    shortest: Option<usize>,
    limits: &Batching,
) -> bool {
    limits.min_step_rows == 0
        || aged
        || rows < limits.min_step_rows
        || shortest.is_none_or(|s| work <= s.saturating_mul(WORK_RATIO))
}

/// How much work a sequence is, for [`join_order`].
fn work(seq: &Sequence) -> usize {
    seq.ids
        .len()
        .saturating_add(seq.cfg.num_beams.saturating_mul(seq.cfg.max_length))
}

/// A sequence in a worker's running batch.
struct Live {
    reply: oneshot::Sender<SequenceResult>,
    ticket: Arc<Ticket>,
    span: tracing::Span,
    enqueued: Instant,
    joined: Instant,
    cost: Budget,
    /// When it last took a decode step (or joined).
    last_step: Instant,
    /// Most sequences it decoded beside (itself included): its `batch_size`.
    batch_size: usize,
    stepped: bool,
}

impl Worker {
    /// The continuous worker: takes [`WorkerMsg::Join`]s between decode steps and tells
    /// the batcher, with [`Command::Left`], what each step freed.
    pub(super) fn run_continuous(
        &self,
        rx: std::sync::mpsc::Receiver<WorkerMsg>,
        limits: Batching,
    ) {
        let model = self.engine.model();
        let mut batch: RunningBatch<u64> = RunningBatch::new(model);
        let mut live: HashMap<u64, Live> = HashMap::new();
        // Admitted to this worker, not encoded yet.
        let mut waiting: Vec<Sequence> = Vec::new();
        let mut next_key = 0u64;
        let mut shown = Budget::default();
        loop {
            if batch.is_empty() && waiting.is_empty() {
                match rx.recv() {
                    Ok(msg) => waiting.extend(msg.into_sequences()),
                    Err(_) => break,
                }
            }
            while let Ok(msg) = rx.try_recv() {
                waiting.extend(msg.into_sequences());
            }
            let mut freed = Budget::default();
            let arrived = self.next_joiners(&mut waiting, &batch, &limits, &mut freed);
            self.join(&mut batch, &mut live, &mut next_key, arrived, &mut freed);
            // Work whose request is gone leaves before a step is spent on it.
            let now = Instant::now();
            let dead = |k: &u64| live.get(k).is_some_and(|l| l.ticket.dead(now).is_some());
            match batch.remove(dead) {
                Ok(gone) => {
                    for key in gone {
                        self.leave_cancelled(&mut live, key, now, &mut freed);
                    }
                }
                Err(e) => self.fail_all(&mut batch, &mut live, &format!("{e:#}"), &mut freed),
            }
            if !batch.is_empty() {
                self.step(&mut batch, &mut live, &limits, &mut freed);
            }
            shown = self.show(&batch, &live, shown);
            if freed != Budget::default() && self.done.send(Command::Left(self.n, freed)).is_err() {
                break;
            }
        }
    }

    /// Takes this boundary's joiners out of `waiting` ([`join_order`]); sequences whose
    /// request is gone are answered and dropped first.
    fn next_joiners(
        &self,
        waiting: &mut Vec<Sequence>,
        batch: &RunningBatch<u64>,
        limits: &Batching,
        freed: &mut Budget,
    ) -> Vec<Sequence> {
        let now = Instant::now();
        let mut alive = Vec::with_capacity(waiting.len());
        for seq in waiting.drain(..) {
            match seq.ticket.dead(now) {
                Some(reason) => {
                    *freed = freed.plus(Budget::of(seq.ids.len(), &seq.cfg));
                    self.cancelled(seq, reason);
                }
                None => alive.push(seq),
            }
        }
        if alive.is_empty() {
            return alive;
        }
        let keys: Vec<(Instant, usize, usize)> = alive
            .iter()
            .map(|s| (s.enqueued, s.ids.len(), work(s)))
            .collect();
        let decode_work: Vec<usize> = alive
            .iter()
            .map(|s| s.cfg.num_beams.saturating_mul(s.cfg.max_length))
            .collect();
        // Long work is not encoded while shorter work runs (see `step_plan`).
        let rows = batch.rows();
        let shortest = batch.entries().map(|e| e.remaining_work).min();
        let bypass = Duration::from_millis(limits.max_bypass_ms);
        let allowed: Vec<usize> = (0..keys.len())
            .filter(|&i| {
                let aged = now.saturating_duration_since(keys[i].0) >= bypass;
                may_join(decode_work[i], aged, rows, shortest, limits)
            })
            .collect();
        let candidates: Vec<(Instant, usize, usize)> = allowed.iter().map(|&i| keys[i]).collect();
        let mut picked: Vec<usize> = if candidates.is_empty() {
            Vec::new()
        } else {
            join_order(&candidates, limits, now)
                .into_iter()
                .map(|j| allowed[j])
                .collect()
        };
        picked.sort_unstable();
        let mut joiners = Vec::with_capacity(picked.len());
        for (i, seq) in alive.into_iter().enumerate() {
            if picked.binary_search(&i).is_ok() {
                joiners.push(seq);
            } else {
                waiting.push(seq);
            }
        }
        joiners
    }

    /// Encodes the arrivals that are still wanted and adds them to the batch.
    fn join<'w>(
        &'w self,
        batch: &mut RunningBatch<'w, u64>,
        live: &mut HashMap<u64, Live>,
        next_key: &mut u64,
        arrived: Vec<Sequence>,
        freed: &mut Budget,
    ) {
        let now = Instant::now();
        let mut joiners = Vec::with_capacity(arrived.len());
        for mut seq in arrived {
            let cost = Budget::of(seq.ids.len(), &seq.cfg);
            let key = *next_key;
            *next_key += 1;
            let waited = now.duration_since(seq.enqueued);
            self.m.queue_duration.observe(waited.as_secs_f64());
            joiners.push(Joiner {
                key,
                ids: std::mem::take(&mut seq.ids),
                cfg: seq.cfg.clone(),
            });
            live.insert(
                key,
                Live {
                    reply: seq.reply,
                    ticket: seq.ticket,
                    span: seq.span,
                    enqueued: seq.enqueued,
                    joined: now,
                    last_step: now,
                    cost,
                    batch_size: 0,
                    stepped: false,
                },
            );
        }
        if joiners.is_empty() {
            return;
        }
        let keys: Vec<u64> = joiners.iter().map(|j| j.key).collect();
        let n = keys.len();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| batch.join(joiners)));
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("encoding failed: {e:#}")),
            Err(panic) => Some(format!("encoding panicked: {}", panic_message(&*panic))),
        };
        match failure {
            None => {
                self.m.joins.inc_by(n as u64);
                for key in &keys {
                    let l = &live[key];
                    l.span.in_scope(|| {
                        tracing::debug!(
                            model = %self.model,
                            worker = self.n,
                            queue_ms = l.joined.duration_since(l.enqueued).as_secs_f64() * 1000.0,
                            encode_ms = started.elapsed().as_secs_f64() * 1000.0,
                            joined_with = n,
                            "sequence batched"
                        );
                    });
                }
            }
            // A failed join leaves the batch as it was: only the joiners fail.
            Some(message) => {
                for key in keys {
                    if let Some(l) = live.remove(&key) {
                        self.fail(l, &message, freed);
                    }
                }
            }
        }
    }

    /// One decode step; answers every sequence that finished in it.
    fn step<'w>(
        &'w self,
        batch: &mut RunningBatch<'w, u64>,
        live: &mut HashMap<u64, Live>,
        limits: &Batching,
        freed: &mut Budget,
    ) {
        let started = Instant::now();
        let sequences = batch.len();
        self.m.batch_size.observe(sequences as f64);
        for l in live.values_mut() {
            l.batch_size = l.batch_size.max(sequences);
            if !l.stepped {
                l.stepped = true;
                self.m.time_to_first_step.observe(
                    started
                        .saturating_duration_since(l.ticket.arrived)
                        .as_secs_f64(),
                );
            }
        }
        let stepping = self.plan_step(batch, live, limits, started);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| match &stepping {
            None => batch.step(),
            Some(stepping) => batch.step_some(|k| stepping.contains(k)),
        }));
        self.m.decode_step.observe(started.elapsed().as_secs_f64());
        let out = match result {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return self.fail_all(batch, live, &format!("generation failed: {e:#}"), freed)
            }
            Err(panic) => {
                let message = format!("generation panicked: {}", panic_message(&*panic));
                return self.fail_all(batch, live, &message, freed);
            }
        };
        let now = Instant::now();
        for (key, hypotheses) in out.finished {
            if let Some(l) = live.remove(&key) {
                self.finish(l, hypotheses, now, freed);
            }
        }
    }

    /// With step scheduling on (`min_step_rows` > 0), the inputs the next step advances
    /// ([`step_plan`]); `None`: all of them.
    fn plan_step(
        &self,
        batch: &RunningBatch<u64>,
        live: &mut HashMap<u64, Live>,
        limits: &Batching,
        now: Instant,
    ) -> Option<HashSet<u64>> {
        if limits.min_step_rows == 0 {
            return None;
        }
        let bypass = Duration::from_millis(limits.max_bypass_ms);
        let plan: Vec<(usize, usize, bool)> = batch
            .entries()
            .map(|e| {
                let aged = live
                    .get(e.key)
                    .is_some_and(|l| now.saturating_duration_since(l.last_step) >= bypass);
                (e.rows, e.remaining_work, aged)
            })
            .collect();
        let run = step_plan(&plan, limits.min_step_rows);
        let stepping: HashSet<u64> = batch
            .keys()
            .zip(&run)
            .filter(|(_, &r)| r)
            .map(|(k, _)| *k)
            .collect();
        for k in &stepping {
            if let Some(l) = live.get_mut(k) {
                l.last_step = now;
            }
        }
        Some(stepping)
    }

    fn finish(&self, l: Live, hypotheses: Vec<Hypothesis>, now: Instant, freed: &mut Budget) {
        *freed = freed.plus(l.cost);
        self.m.leaves_finished.inc();
        let _span = l.span.enter();
        let result = match self.engine.with_texts(hypotheses) {
            Ok(outputs) => {
                for g in &outputs {
                    let generated = g.hypothesis.ids.len().saturating_sub(1);
                    self.m.generated_hist.observe(generated as f64);
                    self.m.generated_total.inc_by(generated as u64);
                }
                let inference = now.duration_since(l.joined);
                self.m.inference_duration.observe(inference.as_secs_f64());
                tracing::debug!(
                    model = %self.model,
                    worker = self.n,
                    inference_ms = inference.as_secs_f64() * 1000.0,
                    batch_size = l.batch_size,
                    "sequence finished"
                );
                Ok(Finished {
                    outputs,
                    queue_time: l.joined.duration_since(l.enqueued),
                    inference_time: inference,
                    batch_size: l.batch_size,
                })
            }
            Err(e) => Err(SequenceError::Failed(format!("decoding failed: {e:#}"))),
        };
        let _ = l.reply.send(result);
    }

    fn leave_cancelled(
        &self,
        live: &mut HashMap<u64, Live>,
        key: u64,
        now: Instant,
        freed: &mut Budget,
    ) {
        if let Some(l) = live.remove(&key) {
            *freed = freed.plus(l.cost);
            self.m.leaves_cancelled.inc();
            let reason = l.ticket.dead(now).unwrap_or(CancelReason::Client);
            self.cancelled_reply(l.reply, &l.span, reason);
        }
    }

    fn fail(&self, l: Live, message: &str, freed: &mut Budget) {
        *freed = freed.plus(l.cost);
        self.m.leaves_failed.inc();
        l.span.in_scope(|| {
            tracing::error!(model = %self.model, worker = self.n, %message, "sequence failed");
        });
        let _ = l
            .reply
            .send(Err(SequenceError::Failed(message.to_string())));
    }

    /// After an engine error or panic the batch's state is unknown: every sequence in it
    /// fails and the worker starts over with an empty batch.
    fn fail_all<'w>(
        &'w self,
        batch: &mut RunningBatch<'w, u64>,
        live: &mut HashMap<u64, Live>,
        message: &str,
        freed: &mut Budget,
    ) {
        for key in batch.keys().copied().collect::<Vec<_>>() {
            if let Some(l) = live.remove(&key) {
                self.fail(l, message, freed);
            }
        }
        *batch = RunningBatch::new(self.engine.model());
    }

    /// Updates the gauges by what changed since `before`; returns what they show now.
    fn show(&self, batch: &RunningBatch<u64>, live: &HashMap<u64, Live>, before: Budget) -> Budget {
        let now = Budget {
            sequences: live.len(),
            rows: batch.rows(),
            kv_tokens: batch.kv_tokens(),
        };
        let delta = |a: usize, b: usize| a as i64 - b as i64;
        self.m.running.add(delta(now.sequences, before.sequences));
        self.m.rows.add(delta(now.rows, before.rows));
        self.m.kv_tokens.add(delta(now.kv_tokens, before.kv_tokens));
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::EarlyStopping;

    fn cfg(num_beams: usize, max_length: usize) -> Arc<GenerationConfig> {
        Arc::new(GenerationConfig {
            decoder_start_token_id: 0,
            eos_token_ids: vec![1],
            pad_token_id: Some(0),
            max_length,
            min_length: 0,
            num_beams,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Bool(false),
            no_repeat_ngram_size: 0,
            repetition_penalty: 1.0,
            num_return_sequences: 1,
        })
    }

    fn seq(len: usize, cfg: &Arc<GenerationConfig>, waited: Duration, now: Instant) -> Sequence {
        Sequence {
            ids: vec![1; len],
            cfg: cfg.clone(),
            ticket: Arc::new(Ticket::new(now, now + Duration::from_secs(60))),
            enqueued: now - waited,
            reply: oneshot::channel().0,
            span: tracing::Span::none(),
        }
    }

    fn limits(rows: usize, kv: usize) -> Batching {
        Batching {
            max_batch_size: 8,
            max_batch_rows: rows,
            max_batch_kv_tokens: kv,
            max_bypass_ms: 1000,
            ..Batching::default()
        }
    }

    #[test]
    fn admission_is_fifo_among_those_that_fit() {
        let now = Instant::now();
        let (big, small) = (cfg(8, 10), cfg(1, 10));
        let fresh = Duration::ZERO;
        // 8 rows free: the 8-beam head fits; then two small ones fit no more (8 + 1 > 8)…
        let q: VecDeque<_> = [seq(4, &big, fresh, now), seq(4, &small, fresh, now)].into();
        let mut used = [Budget::default()];
        assert_eq!(admit(&q, &mut used, &limits(8, 1000), now), vec![vec![0]]);
        assert_eq!(
            used[0],
            Budget {
                sequences: 1,
                rows: 8,
                kv_tokens: 84
            }
        );
        // …with 2 rows in use, the big head doesn't fit and the small one passes it.
        let mut used = [Budget {
            sequences: 1,
            rows: 2,
            kv_tokens: 20,
        }];
        assert_eq!(admit(&q, &mut used, &limits(8, 1000), now), vec![vec![1]]);
        // Once the head has waited max_bypass_ms, nothing passes it.
        let q: VecDeque<_> = [
            seq(4, &big, Duration::from_millis(1500), now),
            seq(4, &small, fresh, now),
        ]
        .into();
        let mut used = [Budget {
            sequences: 1,
            rows: 2,
            kv_tokens: 20,
        }];
        assert_eq!(
            admit(&q, &mut used, &limits(8, 1000), now),
            vec![Vec::<usize>::new()]
        );
        // The key/value budget counts beams × max_length + input tokens.
        let q: VecDeque<_> = [seq(5, &small, fresh, now), seq(5, &small, fresh, now)].into();
        let mut used = [Budget::default()];
        assert_eq!(admit(&q, &mut used, &limits(8, 29), now), vec![vec![0]]);
        // Two workers: each sequence goes to the one with the most free rows.
        let q: VecDeque<_> = [seq(1, &small, fresh, now), seq(1, &small, fresh, now)].into();
        let mut used = [
            Budget {
                sequences: 1,
                rows: 3,
                kv_tokens: 3,
            },
            Budget::default(),
        ];
        assert_eq!(
            admit(&q, &mut used, &limits(8, 1000), now),
            vec![vec![], vec![0, 1]]
        );
    }

    #[test]
    fn joiners_are_encoded_least_work_first_within_the_token_budget() {
        let now = Instant::now();
        let l = Batching {
            max_join_tokens: 600,
            max_bypass_ms: 1000,
            ..Batching::default()
        };
        let ago = |ms| now - Duration::from_millis(ms);
        // (queued, input tokens, work): a long one queued first, then two short ones.
        let waiting = [
            (ago(300), 256, 2304),
            (ago(200), 256, 272),
            (ago(100), 256, 272),
        ];
        assert_eq!(join_order(&waiting, &l, now), vec![1, 2]);
        // Aged past max_bypass_ms, the long one goes first.
        let waiting = [
            (ago(1300), 256, 2304),
            (ago(200), 256, 272),
            (ago(100), 256, 272),
        ];
        assert_eq!(join_order(&waiting, &l, now), vec![0, 1]);
        // One input over the budget still joins, alone.
        let waiting = [(ago(10), 900, 900), (ago(5), 10, 10)];
        assert_eq!(join_order(&waiting, &l, now), vec![1]);
        assert_eq!(join_order(&waiting[..1], &l, now), vec![0]);
    }

    #[test]
    fn steps_take_the_shortest_work_beyond_an_efficient_step() {
        // A heavy request's 8 inputs (8 rows, 2000 steps of work left) and 10 short ones.
        let mut entries = vec![(8, 8 * 250, false); 8];
        entries.extend(vec![(1, 15, false); 10]);
        let run = step_plan(&entries, 16);
        // The 10 short ones run; one heavy input fills the step to 16+ rows.
        assert_eq!(run.iter().filter(|&&r| r).count(), 11);
        assert!(run[8..].iter().all(|&r| r));
        // Every input runs every step when min_step_rows covers the batch, or when the
        // remaining work is alike (a closed loop of equal requests).
        assert!(step_plan(&entries, 128).iter().all(|&r| r));
        assert!(
            step_plan(&[(4, 200, false), (4, 256, false), (4, 180, false)], 1)
                .iter()
                .all(|&r| r)
        );
        // Waiting longer than max_bypass_ms runs first, whatever its work.
        let run = step_plan(&[(8, 2000, true), (1, 15, false), (1, 15, false)], 1);
        assert_eq!(run, vec![true, true, true]);
        let run = step_plan(&[(8, 2000, false), (1, 15, false), (1, 15, false)], 1);
        assert_eq!(run, vec![false, true, true]);
        // Long joiners wait while short work runs, unless the step is still small.
        let l = Batching {
            min_step_rows: 16,
            ..Batching::default()
        };
        assert!(may_join(2048, false, 42, Some(15), &Batching::default()));
        assert!(!may_join(2048, false, 42, Some(15), &l));
        assert!(may_join(2048, true, 42, Some(15), &l));
        assert!(may_join(2048, false, 8, Some(15), &l));
        assert!(may_join(16, false, 42, Some(15), &l));
        assert!(may_join(16, false, 64, Some(2000), &l));
        assert!(may_join(2048, false, 64, None, &l));
    }

    #[test]
    fn a_sequence_too_big_for_an_empty_batch_is_refused() {
        let l = limits(8, 100);
        assert!(Budget::of(10, &cfg(8, 11)).check(&l).is_ok()); // 88 + 10 = 98
        assert!(Budget::of(13, &cfg(8, 11))
            .check(&l)
            .unwrap_err()
            .contains("max_batch_kv_tokens"));
        assert!(Budget::of(1, &cfg(9, 2))
            .check(&l)
            .unwrap_err()
            .contains("max_batch_rows"));
    }
}
