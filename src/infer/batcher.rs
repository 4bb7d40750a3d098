//! The dynamic batching policy: collect items for one model run until `max_batch` are waiting
//! or `max_delay` has passed since the oldest one arrived, whichever comes first.
//!
//! Pure and synchronous: time is passed in, so the policy is tested without a runtime and the
//! async driver in the worker only sleeps until [`Batcher::deadline`].

use std::time::{Duration, Instant};

/// When a batch is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Largest batch handed to the model.
    pub max_batch: usize,
    /// Longest an item waits, from when it was queued, for companions before its batch runs
    /// anyway (zero: run whatever is queued as soon as the model is free).
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        // No waiting for companions: the model task takes everything queued when the model is
        // free, so batches grow by themselves under load, and at a steady half of the maximum a
        // 20 ms wait cost a third of the median latency for batches of one (BENCHMARKS.md,
        // "Under load").
        BatchPolicy {
            max_batch: CPU_MAX_BATCH,
            max_delay: Duration::ZERO,
        }
    }
}

/// Largest batch for a model on the CPU when `--max-batch` is not given. On the project's
/// 2-core machine a batch costs more per item the larger it is (one ONNX Runtime thread; batch 8
/// is 1.1–1.2× batch 1 per item in `cargo bench --bench pipeline -- pack/`), and in backlog
/// drains batches of 4 used less CPU per frame than batches of 16 in 7 of 8 alternating pairs
/// (median −11 %) and drained 1.12× the frames (BENCHMARKS.md, "Under load", round 4). Batches
/// of 2 did as well as 4; 1 slightly worse.
pub const CPU_MAX_BATCH: usize = 4;

/// Largest batch for a model on a GPU (CUDA, TensorRT) when `--max-batch` is not given: a GPU
/// runs a batch in about the time of one item, so larger batches are where its throughput is.
pub const GPU_MAX_BATCH: usize = 16;

/// The batching options as given: the batch size may be left to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSettings {
    /// Largest batch per model run; `None`: by where the model runs ([`CPU_MAX_BATCH`],
    /// [`GPU_MAX_BATCH`]).
    pub max_batch: Option<usize>,
    /// Longest an item waits for companions (see [`BatchPolicy::max_delay`]).
    pub max_delay: Duration,
}

impl BatchSettings {
    /// The policy for a model whose session runs on `provider` (ONNX Runtime's name for it).
    pub fn policy(&self, provider: &str) -> BatchPolicy {
        let by_device = if provider == super::provider::CPU {
            CPU_MAX_BATCH
        } else {
            GPU_MAX_BATCH
        };
        BatchPolicy {
            max_batch: self.max_batch.unwrap_or(by_device).max(1),
            max_delay: self.max_delay,
        }
    }

    /// Items the channels around the models may hold: at least 16 whatever the batch size, so a
    /// small batch limits what one run takes, not how much the stages can buffer between them.
    pub fn queue_depth(&self) -> usize {
        self.max_batch.unwrap_or(0).max(16)
    }
}

/// Accumulates items in arrival order (so per-camera order is kept) and says when to flush.
#[derive(Debug)]
pub struct Batcher<T> {
    policy: BatchPolicy,
    /// Items waiting, oldest first.
    waiting: Vec<T>,
    /// Arrival time of the oldest waiting item; the flush deadline counts from it.
    oldest: Option<Instant>,
}

impl<T> Batcher<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        assert!(policy.max_batch >= 1, "max_batch must be at least 1");
        Batcher {
            policy,
            waiting: Vec::with_capacity(policy.max_batch),
            oldest: None,
        }
    }

    /// Adds an item; returns a full batch when this item completed one.
    pub fn push(&mut self, item: T, now: Instant) -> Option<Vec<T>> {
        if self.waiting.is_empty() {
            self.oldest = Some(now);
        }
        self.waiting.push(item);
        if self.waiting.len() >= self.policy.max_batch {
            return Some(self.take());
        }
        None
    }

    /// When the waiting items must run at the latest, if any are waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.policy.max_delay)
    }

    /// Returns the waiting items if their deadline has passed.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<T>> {
        match self.deadline() {
            Some(d) if now >= d => Some(self.take()),
            _ => None,
        }
    }

    /// Returns whatever is waiting (at shutdown), possibly nothing.
    pub fn drain(&mut self) -> Vec<T> {
        self.take()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn take(&mut self) -> Vec<T> {
        self.oldest = None;
        std::mem::replace(&mut self.waiting, Vec::with_capacity(self.policy.max_batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max_batch: usize, ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(ms),
        }
    }

    #[test]
    fn batch_size_follows_the_device_unless_chosen() {
        let by_device = BatchSettings::default();
        assert_eq!(
            by_device.policy("CPUExecutionProvider").max_batch,
            CPU_MAX_BATCH
        );
        assert_eq!(
            by_device.policy("CUDAExecutionProvider").max_batch,
            GPU_MAX_BATCH
        );
        assert_eq!(
            by_device.policy("TensorrtExecutionProvider").max_batch,
            GPU_MAX_BATCH
        );
        let chosen = BatchSettings {
            max_batch: Some(8),
            max_delay: Duration::from_millis(5),
        };
        assert_eq!(chosen.policy("CPUExecutionProvider"), policy(8, 5));
        assert_eq!(chosen.policy("CUDAExecutionProvider"), policy(8, 5));
        // The channels between stages keep their depth when batches are small.
        assert_eq!(by_device.queue_depth(), 16);
        assert_eq!(
            BatchSettings {
                max_batch: Some(1),
                ..by_device
            }
            .queue_depth(),
            16
        );
        assert_eq!(
            BatchSettings {
                max_batch: Some(32),
                ..by_device
            }
            .queue_depth(),
            32
        );
    }

    #[test]
    fn flushes_when_full() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(3, 100));
        assert_eq!(b.push(1, t0), None);
        assert_eq!(b.push(2, t0), None);
        assert_eq!(b.push(3, t0), Some(vec![1, 2, 3]));
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn flushes_at_the_deadline_of_the_oldest() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(10, 50));
        b.push("a", t0);
        b.push("b", t0 + Duration::from_millis(40));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(50)));
        assert_eq!(b.poll(t0 + Duration::from_millis(49)), None);
        assert_eq!(b.poll(t0 + Duration::from_millis(50)), Some(vec!["a", "b"]));
    }

    #[test]
    fn batch_of_one_runs_immediately() {
        let mut b = Batcher::new(policy(1, 1000));
        assert_eq!(b.push(7, Instant::now()), Some(vec![7]));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Push(u8),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6).prop_map(Step::Push),
            (0u64..30).prop_map(Step::Wait)
        ]
    }

    proptest! {
        /// Every item comes out exactly once, in arrival order (so each camera's frames stay in
        /// order), no batch exceeds max_batch, and no item waits past its deadline when the
        /// driver polls at the deadline.
        #[test]
        fn never_loses_duplicates_or_reorders(
            max_batch in 1usize..9,
            delay in 1u64..25,
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = Batcher::new(policy(max_batch, delay));
            let mut seq = 0u32;
            let mut out: Vec<(u8, u32, Instant)> = Vec::new();
            let mut flushed_at = Vec::new();
            for s in steps {
                match s {
                    Step::Push(camera) => {
                        seq += 1;
                        if let Some(batch) = b.push((camera, seq, now), now) {
                            prop_assert!(batch.len() <= max_batch);
                            for i in &batch { flushed_at.push((i.2, now)); }
                            out.extend(batch);
                        }
                    }
                    Step::Wait(ms) => {
                        let until = now + Duration::from_millis(ms);
                        // The driver wakes at each deadline before `until`.
                        while let Some(d) = b.deadline() {
                            if d > until { break; }
                            let batch = b.poll(d).expect("deadline reached");
                            prop_assert!(batch.len() <= max_batch);
                            for i in &batch { flushed_at.push((i.2, d)); }
                            out.extend(batch);
                        }
                        now = until;
                    }
                }
            }
            out.extend(b.drain());
            let seqs: Vec<u32> = out.iter().map(|i| i.1).collect();
            prop_assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());
            for (arrived, left) in flushed_at {
                prop_assert!(left - arrived <= Duration::from_millis(delay));
            }
        }
    }
}
