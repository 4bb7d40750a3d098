//! Accuracy through the full worker path: real photos (and synthetic masked copies) sent through
//! the broker, faces found by the default detector, each crop classified by the mask model.
//! Floors sit just under what was measured (models/README.md), so a regression fails.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context};
use common::*;
use vigil::contract::observation::Verdict;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faces_are_found_and_masks_decided_through_the_worker() -> Result {
    let counts: HashMap<String, usize> =
        std::fs::read_to_string(repo().join("tests/data/faces.tsv"))?
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (n, c) = l.split_once('\t').unwrap();
                (
                    n.rsplit_once('.').unwrap().0.to_string(),
                    c.trim().parse().unwrap(),
                )
            })
            .collect();
    let mut recs = Vec::new();
    for set in ["faces", "masked"] {
        let mut names: Vec<_> = std::fs::read_dir(repo().join("tests/data").join(set))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
            .collect();
        names.sort();
        for p in names {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            recs.push(frame(&format!("{set}.{stem}"), "site-001", 0, jpeg_of(&p)?));
        }
    }
    ensure!(recs.len() == 16);
    // Close-ups (tests/data/closeups): one small face filling the frame, which the detector
    // misses on the frame as it comes; the default rules allow close-ups on every camera.
    let closeups: Vec<(String, String)> =
        std::fs::read_to_string(repo().join("tests/data/closeups/labels.txt"))?
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut w = l.split_whitespace();
                (w.next().unwrap().into(), w.next().unwrap().into())
            })
            .collect();
    for (name, _) in &closeups {
        let bytes = std::fs::read(repo().join("tests/data/closeups").join(name))?;
        recs.push(frame(&format!("closeup.{name}"), "site-001", 0, bytes));
    }
    let topics = create_topics(2).await?;
    produce(&topics.frames, &recs).await?;
    let worker = Worker::start(&topics, &unique("g"), &[])?;
    let got = collect(
        &topics.observations,
        recs.len(),
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| worker.log_text())?;

    let mut found = HashMap::from([("faces", 0usize), ("masked", 0)]);
    let mut right = HashMap::from([("faces", 0usize), ("masked", 0)]);
    let mut total = HashMap::from([("faces", 0usize), ("masked", 0)]);
    for g in &got {
        let o = g.observation()?;
        let (set, stem) = o.camera.split_once('.').context("camera names the photo")?;
        if set == "closeup" {
            let want = &closeups
                .iter()
                .find(|(n, _)| n == stem)
                .context("a close-up")?
                .1;
            let rule = &o.rules[0];
            ensure!(
                rule.verdict.as_str() == want && o.detections.len() == 1,
                "close-up {stem}: {:?} with {} detections, expected {want} with one (the \
                 close-up search: the frame shrunk, or judged whole)",
                rule.verdict,
                o.detections.len()
            );
            continue;
        }
        let set = if set == "faces" { "faces" } else { "masked" };
        let want = |label: &str| {
            if set == "faces" {
                label == "no_mask" || label == "mask_incorrect"
            } else {
                label == "mask"
            }
        };
        let n = counts[stem];
        ensure!(
            o.detections.len() <= n + 1,
            "{}: {} detections for {n} faces",
            o.camera,
            o.detections.len()
        );
        *total.get_mut(set).unwrap() += n;
        *found.get_mut(set).unwrap() += o.detections.len();
        *right.get_mut(set).unwrap() += o.detections.iter().filter(|d| want(&d.label)).count();
        ensure!(
            o.models.iter().any(|m| m.name == "face-yunet"),
            "the default detector ran"
        );
        let rule = &o.rules[0];
        // The default rule: a crop whose `unclear` score outweighs the rest is not judged; of
        // the others, one whose no_mask + mask_incorrect outweigh the rest is a violation.
        let share = |d: &vigil::contract::observation::DetectionResult, labels: &[&str]| {
            let total: f32 = d.scores.values().sum();
            labels.iter().filter_map(|l| d.scores.get(*l)).sum::<f32>() / total
        };
        let judged: Vec<_> = o
            .detections
            .iter()
            .filter(|d| share(d, &["unclear"]) <= 0.5)
            .collect();
        let expected = if judged.is_empty() {
            Verdict::Unknown
        } else if judged
            .iter()
            .any(|d| share(d, &["no_mask", "mask_incorrect"]) > 0.5)
        {
            Verdict::Violation
        } else {
            Verdict::Compliant
        };
        if set == "masked" {
            ensure!(
                expected != Verdict::Violation,
                "{}: a masked photo judged a violation",
                o.camera
            );
        }
        ensure!(
            rule.verdict == expected,
            "{}: verdict {:?}, expected {expected:?}",
            o.camera,
            rule.verdict
        );
        if expected == Verdict::Unknown {
            let why = if o.detections.is_empty() {
                "no_detection"
            } else {
                "not_judgeable"
            };
            ensure!(rule.reason.as_deref() == Some(why) && rule.level.is_none());
        }
    }
    eprintln!(
        "unmasked: {}/{} faces found, {} no_mask; masked: {}/{} found, {} mask",
        found["faces"],
        total["faces"],
        right["faces"],
        found["masked"],
        total["masked"],
        right["masked"]
    );
    ensure!(total["faces"] == 24 && total["masked"] == 24);
    ensure!(
        found["faces"] >= 23,
        "recall on unmasked faces: {}/24",
        found["faces"]
    );
    ensure!(
        right["faces"] >= found["faces"] - 1,
        "unmasked faces called no_mask: {}/{}",
        right["faces"],
        found["faces"]
    );
    ensure!(
        found["masked"] >= 22,
        "recall on masked faces: {}/24",
        found["masked"]
    );
    // The drawn masks are flat shapes; a few are `unclear` (not judged), none may be a violation
    // (checked per photo above). mask-v2 `scenes-5` calls 20 of the 23 found `mask` and the
    // other 3 `unclear` (`scenes-4`: 19 and 4; `scenes-3`: 18 and 5); the floor sits under that.
    ensure!(
        right["masked"] * 4 >= found["masked"] * 3,
        "masked faces called mask: {}/{}",
        right["masked"],
        found["masked"]
    );
    Ok(())
}

/// Gloves and animals through the worker with the default rules: bare hands in the `prep` zone
/// are violations and gloved ones are not; a cat in a kitchen is a violation, people are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gloves_and_animals_are_judged_through_the_worker() -> Result {
    let mut recs = Vec::new();
    let mut want = HashMap::new();
    let mut add = |camera: String, zone: &str, jpeg: Vec<u8>, rule: &str, violation: bool| {
        let mut r = frame(&camera, "site-001", 0, jpeg);
        r.headers.push(("zone".into(), zone.as_bytes().to_vec()));
        recs.push(r);
        want.insert(camera, (rule.to_string(), violation));
    };
    let mut gloves: Vec<_> = std::fs::read_dir(repo().join("tests/data/gloves"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    gloves.sort();
    for p in &gloves {
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        let bare = stem.starts_with("bare_hand");
        add(
            format!("prep.{stem}"),
            "prep",
            std::fs::read(p)?,
            "gloves_required",
            bare,
        );
    }
    ensure!(gloves.len() == 4, "two bare and two gloved test photos");
    // A small close-up of a face in the `prep` zone: no hand in it. Close-ups are searched for
    // faces only, so the gloves rule finds no hand and judges nothing (it must not judge the
    // whole frame as a hand).
    let closeup = std::fs::read(repo().join("tests/data/closeups/maksssksksss703-face8.jpg"))?;
    add(
        "prep.closeup".into(),
        "prep",
        closeup,
        "gloves_required",
        false,
    );
    let cat = std::fs::read(repo().join("tests/data/animals/chelsea.jpg"))?;
    add("pet.chelsea".into(), "kitchen", cat, "no_animals", true);
    for name in ["grace_hopper.jpg", "sample1.jpg", "sample2.jpg"] {
        add(
            format!("people.{name}"),
            "kitchen",
            face(name),
            "no_animals",
            false,
        );
    }
    let topics = create_topics(2).await?;
    produce(&topics.frames, &recs).await?;
    let worker = Worker::start(&topics, &unique("g"), &[])?;
    let got = collect(
        &topics.observations,
        recs.len(),
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| worker.log_text())?;
    for g in &got {
        let o = g.observation()?;
        let (rule, violation) = &want[&o.camera];
        let r = o
            .rules
            .iter()
            .find(|r| &r.rule == rule)
            .with_context(|| format!("{}: rule {rule} applied", o.camera))?;
        eprintln!("{}: {rule} {:?} {:?}", o.camera, r.verdict, o.detections);
        if o.camera == "prep.closeup" {
            ensure!(
                r.verdict == Verdict::Unknown
                    && r.reason.as_deref() == Some("no_detection")
                    && !o.detections.iter().any(|d| &d.rule == rule),
                "prep.closeup: the gloves rule judged a frame with no hand: {r:?} {:?}",
                o.detections
            );
        }
        if *violation {
            ensure!(
                r.verdict == Verdict::Violation,
                "{}: {rule} is a violation",
                o.camera
            );
        } else {
            ensure!(
                r.verdict != Verdict::Violation,
                "{}: {rule} is not a violation",
                o.camera
            );
        }
    }
    Ok(())
}

/// A camera whose scene stays still: its faces' crops are classified on the first frame and
/// every fifth after, and the frames between reuse those scores with the same verdicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_faces_reuse_their_scores() -> Result {
    let recs: Vec<Rec> = (0..10)
        .map(|i| {
            let mut r = frame("still", "site-001", i, face("grace_hopper.jpg"));
            r.headers.push(("zone".into(), b"kitchen".to_vec()));
            r
        })
        .collect();
    let topics = create_topics(1).await?;
    produce(&topics.frames, &recs).await?;
    let addr = free_addr()?;
    let worker = Worker::start(
        &topics,
        &unique("g"),
        &["--reclassify-every", "5", "--metrics-addr", &addr],
    )?;
    let got = collect(
        &topics.observations,
        recs.len(),
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| worker.log_text())?;
    let first = got[0].observation()?;
    let faces = first.detections.len();
    ensure!(faces == 1, "one face in the photo: {:?}", first.detections);
    for g in &got {
        let o = g.observation()?;
        ensure!(o.rules[0].verdict == Verdict::Violation, "{o:?}");
        ensure!(o.detections.len() == faces && o.detections[0].label == first.detections[0].label);
    }
    let scrape = get(&addr, "/metrics")?;
    let count = |outcome: &str| {
        scraped(
            &scrape,
            &format!("vigil_crops_total{{outcome=\"{outcome}\",rule=\"mask_required\"}}"),
        )
    };
    ensure!(
        count("classified") == Some(2.0) && count("reused") == Some(8.0),
        "frames 1 and 6 classified, 8 reused: {scrape}"
    );
    Ok(())
}
