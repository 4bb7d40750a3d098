//! The worker's progress line and the gauges sampled once a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::contract::{Outcome, Reason};
use crate::decode::Pending;
use crate::episodes::StateStore;
use crate::infer::FramePlan;
use crate::telemetry::cameras::CAMERA_IDLE;
use crate::telemetry::Metrics;

/// Updates queue-depth gauges every second and logs a progress line at `interval`. Holds only
/// weak senders so that it never keeps a stage alive.
pub async fn watch_queues(
    metrics: Arc<Metrics>,
    store: Arc<StateStore>,
    decode: mpsc::WeakSender<Pending<FramePlan>>,
    output: mpsc::WeakSender<Outcome>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_log = Instant::now();
    let mut last_processed = 0;
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks % 10 == 0 {
            if let Some(c) = &metrics.cameras {
                c.sweep(CAMERA_IDLE);
            }
        }
        let open = store.open_episodes();
        metrics.episodes_open.reset();
        for ((site, rule), n) in open {
            metrics
                .episodes_open
                .with_label_values(&[&site, &rule])
                .set(n);
        }
        if let Some(s) = decode.upgrade() {
            metrics
                .queue_depth
                .with_label_values(&["decode"])
                .set((s.max_capacity() - s.capacity()) as i64);
        }
        if let Some(s) = output.upgrade() {
            metrics
                .queue_depth
                .with_label_values(&["output"])
                .set((s.max_capacity() - s.capacity()) as i64);
        }
        if last_log.elapsed() >= interval {
            let processed = metrics.frames_processed.get();
            let rate = (processed - last_processed) as f64 / last_log.elapsed().as_secs_f64();
            let dead: u64 = Reason::ALL
                .iter()
                .map(|r| {
                    metrics
                        .frames_dead_lettered
                        .with_label_values(&[r.as_str()])
                        .get()
                })
                .sum();
            tracing::info!(
                received = metrics.frames_received.get(),
                processed,
                dead_lettered = dead,
                in_flight = metrics.frames_in_flight.get(),
                rate_per_s = format!("{rate:.1}"),
                "worker progress"
            );
            last_log = Instant::now();
            last_processed = processed;
        }
    }
}
