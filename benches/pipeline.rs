//! Per-stage costs of the frame path: JPEG decode (full vs reduced), preprocessing, each model's
//! throughput per item at batch sizes 1–32 (1 and 2 threads), and the batcher's overhead.
//!
//! `cargo bench --bench pipeline` (after scripts/bootstrap.sh). Results: BENCHMARKS.md.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use opencv::core::{Mat, Size};
use std::collections::BTreeMap;

use vigil::codec::avro::{Codec, OBSERVATION};
use vigil::contract::observation::{
    DetectionResult, FrameSize, ModelRef, Observation, RuleResult, SourceRef, StageTiming, Timings,
    Verdict,
};
use vigil::decode;
use vigil::infer::batcher::{BatchPolicy, Batcher};
use vigil::infer::model::{Device, ExecutionConfig, Model};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A real photo re-encoded as a `width`×`height` JPEG at quality 85 (camera-like).
fn frame(width: i32, height: i32) -> Vec<u8> {
    let src = opencv::imgcodecs::imread(
        repo()
            .join("tests/data/faces/sample1.jpg")
            .to_str()
            .unwrap(),
        opencv::imgcodecs::IMREAD_COLOR,
    )
    .unwrap();
    let mut out = Mat::default();
    opencv::imgproc::resize(
        &src,
        &mut out,
        Size::new(width, height),
        0.0,
        0.0,
        opencv::imgproc::INTER_AREA,
    )
    .unwrap();
    decode::encode_jpeg(&out, 85).unwrap()
}

fn load_model(name: &str, threads: usize) -> Model {
    let (env, _) =
        vigil::infer::runtime::init(None).expect("ONNX Runtime (run scripts/bootstrap.sh)");
    let exec = ExecutionConfig {
        device: Device::Cpu,
        intra_threads: threads,
        spinning: false,
    };
    Model::load_named(env, &repo().join("models"), name, exec).unwrap()
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, w, h) in [("720p", 1280, 720), ("1080p", 1920, 1080)] {
        let jpeg = frame(w, h);
        for factor in [1u32, 2, 4] {
            g.bench_with_input(
                BenchmarkId::new(name, format!("1/{factor}")),
                &jpeg,
                |b, j| b.iter(|| decode::decode(black_box(j), factor).unwrap()),
            );
        }
    }
    g.finish();
}

fn bench_preprocess(c: &mut Criterion) {
    let m = load_model("mask", 1);
    let mut g = c.benchmark_group("preprocess_to_224");
    for (name, w, h) in [
        ("720p_reduced_1_2", 1280, 720),
        ("1080p_reduced_1_4", 1920, 1080),
    ] {
        let jpeg = frame(w, h);
        let factor = decode::reduction_factor(w as u32, h as u32, 224, 224);
        let img = decode::decode(&jpeg, factor).unwrap();
        let mut scratch = Mat::default();
        let mut out = Vec::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                decode::preprocess(black_box(&img), &m.manifest.input, &mut scratch, &mut out)
                    .unwrap()
            })
        });
    }
    g.finish();
    // The default pack's per-frame inputs from a full 720p decode, each into a fresh buffer as
    // the decoder makes them (the tensor leaves with the frame).
    let img = decode::decode(&frame(1280, 720), 1).unwrap();
    let mut g = c.benchmark_group("preprocess_720p_fresh");
    for name in ["face-yunet", "objectron"] {
        let m = load_model(name, 1);
        let mut scratch = Mat::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut out = Vec::new();
                decode::preprocess(black_box(&img), &m.manifest.input, &mut scratch, &mut out)
                    .unwrap();
                out
            })
        });
    }
    g.finish();
}

/// Throughput per item at batch sizes 1–32, for each model at 1 and 2 ONNX Runtime threads.
fn bench_models(c: &mut Criterion) {
    let img = decode::decode(&frame(1280, 720), 2).unwrap();
    for name in ["mask", "face-blazeface"] {
        for threads in [1usize, 2] {
            let mut m = load_model(name, threads);
            let mut tensor = Vec::new();
            decode::preprocess(&img, &m.manifest.input, &mut Mat::default(), &mut tensor).unwrap();
            let mut g = c.benchmark_group(format!("{name}_{threads}thread"));
            g.sample_size(10)
                .measurement_time(Duration::from_secs(3))
                .warm_up_time(Duration::from_secs(1));
            for batch in [1usize, 2, 4, 8, 16, 32] {
                let items: Vec<&[f32]> = (0..batch).map(|_| tensor.as_slice()).collect();
                g.throughput(Throughput::Elements(batch as u64));
                g.bench_with_input(BenchmarkId::new("batch", batch), &items, |b, items| {
                    b.iter(|| m.infer(black_box(items)).unwrap())
                });
            }
            g.finish();
        }
    }
}

/// The cost of each model of both packs per item (one frame for a detector, one crop for a
/// classifier), one ONNX Runtime thread, batch 1, 4 (the worker's CPU default) and 8:
/// `cargo bench --bench pipeline -- pack/`.
fn bench_pack(c: &mut Criterion) {
    let frame720 = decode::decode(&frame(1280, 720), 1).unwrap();
    let mut g = c.benchmark_group("pack");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for name in [
        "face-blazeface",
        "face-yunet",
        "mask",
        "mask-v2",
        "hand-palm",
        "gloves",
        "objectron",
        "objectron-int8",
    ] {
        let mut m = load_model(name, 1);
        let mut tensor = Vec::new();
        decode::preprocess(
            &frame720,
            &m.manifest.input,
            &mut Mat::default(),
            &mut tensor,
        )
        .unwrap();
        for batch in [1usize, 4, 8] {
            let items: Vec<&[f32]> = (0..batch).map(|_| tensor.as_slice()).collect();
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(BenchmarkId::new(name, batch), &items, |b, items| {
                b.iter(|| m.infer(black_box(items)).unwrap())
            });
        }
    }
    g.finish();
}

fn bench_batcher(c: &mut Criterion) {
    let mut g = c.benchmark_group("batcher");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("push_1000_items_max_batch_8", |b| {
        b.iter(|| {
            let mut bt = Batcher::new(BatchPolicy {
                max_batch: 8,
                max_delay: Duration::from_millis(10),
            });
            let now = Instant::now();
            let mut n = 0;
            for i in 0..1000u32 {
                if let Some(batch) = bt.push(black_box(i), now) {
                    n += batch.len();
                }
            }
            n + bt.drain().len()
        })
    });
    g.finish();
}

/// A typical observation: one rule, two faces found and classified.
fn observation() -> Observation {
    let detection = |x: f32| DetectionResult {
        rule: "mask_required".into(),
        detector: "face-blazeface".into(),
        score: 0.91,
        bbox: [x, 0.2, x + 0.1, 0.35],
        classifier: "mask".into(),
        label: "no_mask".into(),
        scores: BTreeMap::from([("mask".into(), 0.04), ("no_mask".into(), 0.96)]),
    };
    let model = |name: &str| ModelRef {
        name: name.into(),
        version: "1".into(),
        provider: "CPUExecutionProvider".into(),
    };
    let stage = |model: &str, batch_size| StageTiming {
        model: model.into(),
        inference_ms: 21.3,
        batch_size,
        batch_wait_ms: 4.2,
    };
    Observation {
        camera: "cam-0412".into(),
        site: "site-031".into(),
        zone: Some("kitchen".into()),
        captured_at_ms: 1_763_877_000_123,
        seq: 48_211,
        frame: FrameSize {
            width: 1280,
            height: 720,
            decoded_width: 640,
            decoded_height: 360,
        },
        rules: vec![RuleResult {
            rule: "mask_required".into(),
            verdict: Verdict::Violation,
            reason: None,
            level: Some(0.96),
            detections: 2,
        }],
        detections: vec![detection(0.1), detection(0.6)],
        classifications: vec![],
        models: vec![model("face-blazeface"), model("mask")],
        timings: Timings {
            decode_ms: 3.2,
            preprocess_ms: 0.4,
            crop_ms: 0.3,
            stages: vec![stage("face-blazeface", 8), stage("mask", 14)],
            total_ms: 31.0,
        },
        source: SourceRef {
            topic: "vigil.frames".into(),
            partition: 7,
            offset: 1_204_332,
        },
        worker: "vigil-worker-3-2211".into(),
        processed_at_ms: 1_763_877_000_201,
    }
}

/// What an observation costs to encode, in JSON (before) and Avro (now).
fn bench_records(c: &mut Criterion) {
    let o = observation();
    let codec: Codec<Observation> = Codec::new(&OBSERVATION);
    let json = serde_json::to_vec(&o).unwrap();
    let avro = codec.encode(&o).unwrap();
    eprintln!(
        "observation size: JSON {} bytes, Avro single-object {} bytes",
        json.len(),
        avro.len()
    );
    let mut g = c.benchmark_group("observation");
    g.bench_function("encode_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&o)).unwrap())
    });
    g.bench_function("encode_avro", |b| {
        b.iter(|| codec.encode(black_box(&o)).unwrap())
    });
    g.bench_function("encode_avro_via_value", |b| {
        b.iter(|| codec.encode_via_value(black_box(&o)).unwrap())
    });
    g.bench_function("decode_avro", |b| {
        b.iter(|| codec.decode(black_box(&avro)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = bench_decode, bench_preprocess, bench_models, bench_pack, bench_batcher, bench_records
}
criterion_main!(benches);
