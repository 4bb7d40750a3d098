//! vigil: camera frames in from Kafka, compliance observations out.
//!
//! The stages, in the order a frame meets them:
//!
//! - [`gateway`] publishes JPEG frames for simulated or real cameras to the frames topic
//!   (key = camera id; headers per [`frame`]'s contract).
//! - [`worker`] is a consumer-group member: it reads frames, checks them ([`frame`], [`jpeg`]:
//!   headers, size, JPEG structure and pixel budget before any decode), decodes and preprocesses
//!   them off the async runtime ([`decode`]), batches them across cameras ([`batcher`]), runs
//!   the model ([`model`], loaded through [`runtime`]) and publishes one [`observation`] per frame,
//!   or a dead letter with a reason. Offsets are stored only once a frame's outcome is delivered
//!   ([`offsets`]).
//! - Per frame, [`rules`] says which models apply to the camera; [`cascade`] crops detections
//!   for the classifier ([`inference`] runs the stages); [`episodes`] smooths each (camera, rule)
//!   over event time into violation episodes, whose state [`state`] keeps per partition and
//!   writes to the compacted state topic. [`events`] are the episode events published.
//! - Output records are Avro ([`avro`]: single-object encoding, or the Confluent wire format
//!   with a [`registry`]). [`alerts`] is the reference subscriber of the events: readable lines,
//!   deduplication by event id, webhook delivery over [`http`].
//! - [`metrics`] exposes Prometheus metrics; [`kafka`] holds client configuration and topic admin;
//!   [`tail`] prints what a topic carries; [`cli`] is the command line.
//!
//! Policy cores ([`batcher`], [`offsets`], [`episodes`], [`frame`], [`jpeg`]) are pure and
//! synchronous; Kafka appears only in [`kafka`], the worker's source and sink, the gateway,
//! [`alerts`] and [`tail`].

pub mod alerts;
pub mod avro;
pub mod batcher;
pub mod cascade;
pub mod cli;
pub mod decode;
pub mod episodes;
pub mod events;
pub mod frame;
pub mod gateway;
pub mod http;
pub mod inference;
pub mod jpeg;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod observation;
pub mod offsets;
pub mod registry;
pub mod rules;
pub mod runtime;
pub mod state;
pub mod tail;
pub mod worker;
