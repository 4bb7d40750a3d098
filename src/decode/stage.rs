//! The decode stage: each frame decoded and preprocessed on a blocking thread, in parallel, then
//! put back in read order by the sequencer.

use std::sync::Arc;
use std::time::Instant;

use opencv::core::Mat;
use opencv::prelude::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::image::{decode, preprocess, reduction_factor};
use super::spec::InputSpec;
use crate::contract::jpeg::JpegInfo;
use crate::contract::observation::FrameSize;
use crate::contract::{DeadLetter, FrameMeta, Origin, Outcome, RawFrame, Reason, Rejection};
use crate::telemetry::Metrics;

/// What to make of one frame that passed intake.
pub struct DecodeJob<P> {
    pub origin: Origin,
    pub meta: FrameMeta,
    /// Dimensions the JPEG header claims (checked against the pixel budget at intake).
    pub info: JpegInfo,
    pub raw: RawFrame,
    /// Models (indices into the decoder's specs) that need a tensor of the whole frame.
    pub inputs: Vec<usize>,
    /// Keep the decoded image for a later stage (crops, debug drawing).
    pub keep_image: bool,
    /// The later stages' plan for the frame, carried along untouched.
    pub plan: P,
}

/// A decoded frame with its whole-frame model inputs.
pub struct Decoded<P> {
    pub origin: Origin,
    pub meta: FrameMeta,
    pub size: FrameSize,
    pub plan: P,
    /// The decoded image, kept while crops may be needed.
    pub image: Option<Arc<Mat>>,
    /// (model, input tensor) for every whole-frame model.
    pub tensors: Vec<(usize, Vec<f32>)>,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
}

/// A decode job in flight: its result, in the order the frame was read.
pub type Pending<P> = JoinHandle<Result<Decoded<P>, Box<DeadLetter>>>;

/// Decodes frames to the input specs of the loaded models.
pub struct Decoder {
    /// Input spec of every model, by model index.
    specs: Vec<InputSpec>,
    metrics: Arc<Metrics>,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Decoder {
    pub fn new(specs: Vec<InputSpec>, metrics: Arc<Metrics>) -> Decoder {
        Decoder { specs, metrics }
    }

    /// The input spec of model `m`.
    pub fn spec(&self, m: usize) -> &InputSpec {
        &self.specs[m]
    }

    /// Blocking: decodes and preprocesses a frame for the models that need it. A frame no model
    /// needs is not decoded at all (it was checked structurally at intake).
    pub fn run<P>(&self, job: DecodeJob<P>) -> Result<Decoded<P>, Box<DeadLetter>> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Mat> = std::cell::RefCell::new(Mat::default());
        }
        let DecodeJob {
            origin,
            meta,
            info,
            raw,
            inputs,
            keep_image,
            plan,
        } = job;
        let mut size = FrameSize {
            width: info.width,
            height: info.height,
            decoded_width: 0,
            decoded_height: 0,
        };
        if inputs.is_empty() {
            return Ok(Decoded {
                origin,
                meta,
                size,
                plan,
                image: None,
                tensors: Vec::new(),
                decode_ms: 0.0,
                preprocess_ms: 0.0,
            });
        }
        let refuse = |origin, raw, rejection| {
            Box::new(DeadLetter {
                origin,
                raw,
                rejection,
            })
        };
        let (need_w, need_h) = inputs.iter().fold((0, 0), |(w, h), &m| {
            let i = &self.specs[m];
            (w.max(i.width), h.max(i.height))
        });
        let t0 = Instant::now();
        let factor = reduction_factor(info.width, info.height, need_w, need_h);
        let img = match decode(&raw.payload, factor) {
            Ok(img) => img,
            Err(rejection) => return Err(refuse(origin, raw, rejection)),
        };
        let decode_time = t0.elapsed();
        let t1 = Instant::now();
        let mut tensors = Vec::with_capacity(inputs.len());
        for m in inputs {
            let mut t = Vec::new();
            let r = SCRATCH.with(|s| preprocess(&img, &self.specs[m], &mut s.borrow_mut(), &mut t));
            if let Err(e) = r {
                let rejection = Rejection::new(Reason::DecodeFailed, format!("preprocess: {e}"));
                return Err(refuse(origin, raw, rejection));
            }
            tensors.push((m, t));
        }
        let preprocess_time = t1.elapsed();
        self.metrics
            .decode_seconds
            .observe(decode_time.as_secs_f64());
        self.metrics
            .preprocess_seconds
            .observe(preprocess_time.as_secs_f64());
        size.decoded_width = img.cols() as u32;
        size.decoded_height = img.rows() as u32;
        Ok(Decoded {
            origin,
            meta,
            size,
            plan,
            image: keep_image.then(|| Arc::new(img)),
            tensors,
            decode_ms: ms(decode_time),
            preprocess_ms: ms(preprocess_time),
        })
    }
}

/// Awaits decode jobs in the order frames were read, so each camera's frames reach the
/// inference stages (and the observations topic) in order although they decode in parallel.
/// Frames that fail to decode go straight to the sink as dead letters.
pub async fn sequence<P>(
    mut jobs: mpsc::Receiver<Pending<P>>,
    frame_tx: mpsc::Sender<Decoded<P>>,
    out_tx: mpsc::Sender<Outcome>,
) {
    while let Some(job) = jobs.recv().await {
        let sent = match job.await {
            Ok(Ok(d)) => frame_tx.send(d).await.is_ok(),
            Ok(Err(dl)) => out_tx.send(Outcome::DeadLetter(dl)).await.is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "decode task panicked");
                false
            }
        };
        if !sent {
            return;
        }
    }
}
