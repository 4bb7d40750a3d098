//! vigil: camera frames in from Kafka, compliance observations and violation events out.
//!
//! # The map
//!
//! One folder per stage, in the order a frame meets them; each depends only on the ones above
//! it (and on the services below the line).
//!
//! ```text
//! contract/   the leaf vocabulary: frame contract and JPEG structure, rejection reasons, the
//!             envelope a frame carries between stages, observation and event records, the
//!             gateways' camera-status record, errors
//! rules/      the rules file: which checks run on which cameras, and episode parameters
//! source/     the group consumer (on its own thread; rebalances drain, commit and restore
//!             there), in-flight offsets, intake checks
//! decode/     JPEG decoding and model input tensors, off the async runtime, in read order
//! infer/      rule planning, models and their batchers, the detector → classifier cascade
//! episodes/   the smoother and episode machine per (camera, rule), its state, judging
//! evidence/   pictures of openings (faces pixelated, violations outlined) in object storage
//! sink/       outcomes published (observations, events, state; dead letters), offsets released
//!             on acknowledgement, state restored on assignment
//! ─────────
//! pipeline/   wires the stages with bounded channels and supervises them (`vigil worker`)
//! commands/   the command line: gateway, worker, ingest, console, topics, tail, alerts (which
//!             also follows acknowledgements and re-notifies overdue episodes)
//! gateway/    `vigil gateway --cameras-file`: the site gateway (cameras over RTSP and HTTP,
//!             reconnects, camera health, caps, store and forward on disk)
//! console/    `vigil console`: sign-in and per-site access, open violations with their pictures,
//!             cameras offline (the gateways' status topic), acknowledgements (their own
//!             topic), history and the compliance scorecard (SQLite)
//! ingest/     `vigil ingest`: HTTP(S) uploads from cameras and phones become frames
//! codec/      Avro, the schema registry client
//! telemetry/  Prometheus metrics and the /metrics, /healthz, /readyz endpoint (axum)
//! kafka/      client configuration (file, environment, -X), the start-up connection check,
//!             headers, topic administration
//! http        the HTTPS client (reqwest, rustls) for the webhook and the registry
//! ```
//!
//! # The path of a frame
//!
//! 1. A site gateway ([`gateway`]) publishes a JPEG to the frames topic (key = camera, headers
//!    per [`contract::frame`]), through its on-disk buffer; the simulator
//!    ([`commands::gateway`]) publishes one source as many cameras.
//! 2. [`source::consumer`] reads it on the consumer thread, registers it in flight
//!    ([`source::offsets`]) and hands it to the intake, which checks headers, size, JPEG
//!    structure and pixel budget ([`source::intake`]); a refused frame becomes a
//!    [`contract::DeadLetter`].
//! 3. [`infer::plan`] says which rules and models apply to its camera; [`decode::stage`] decodes
//!    it on the blocking pool and the sequencer puts frames back in read order.
//! 4. [`infer::stage`] batches inputs per model across cameras and runs ONNX Runtime; the
//!    collector crops detections for the classifiers ([`infer::cascade`]) and builds the
//!    [`contract::Observation`].
//! 5. [`episodes::judge`] applies it to its camera's episodes ([`episodes::machine`],
//!    [`episodes::store`]), raising [`contract::ViolationEvent`]s.
//! 6. [`sink::produce`] publishes the observation and events (Avro, [`codec`]), then the
//!    state; [`sink::emit`] releases the frame's offset once the broker has acknowledged all.
//!
//! Policy cores are pure and synchronous, with their tests beside them: the offset tracker
//! ([`source::offsets`]), rule planning ([`infer::plan`]), the batcher ([`infer::batcher`]),
//! the cascade ([`infer::cascade`]), the episode machine and store. Kafka appears only in the
//! source, the sink, [`kafka`], and the gateway, tail and alerts commands.

pub mod codec;
pub mod commands;
pub mod console;
pub mod contract;
pub mod decode;
pub mod episodes;
pub mod evidence;
pub mod gateway;
pub mod http;
pub mod infer;
pub mod ingest;
pub mod kafka;
pub mod pipeline;
pub mod rules;
pub mod sink;
pub mod source;
pub mod telemetry;
