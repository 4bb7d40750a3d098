//! Start-up: what a worker loads before it joins the group (a worker that cannot publish or infer
//! must not take partitions).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use super::config::WorkerConfig;
use crate::codec::avro::{OBSERVATION, VIOLATION_EVENT};
use crate::codec::registry::Registry;
use crate::codec::Codecs;
use crate::infer::model::{self, Model};
use crate::infer::{ModelInfo, Planner};
use crate::rules::RuleSet;

/// The Avro writers: registered with the schema registry when one is configured.
pub async fn codecs(cfg: &WorkerConfig) -> anyhow::Result<Codecs> {
    let Some(registry) = &cfg.schema_registry else {
        return Ok(Codecs::single_object());
    };
    let registry = Registry::new(registry).map_err(|e| anyhow!(e))?;
    let patience = Duration::from_secs(30);
    Ok(Codecs {
        observations: registry
            .codec_for(&OBSERVATION, &cfg.observations_topic, patience)
            .await
            .context("cannot register the observation schema (--schema-registry)")?,
        events: registry
            .codec_for(&VIOLATION_EVENT, &cfg.violations_topic, patience)
            .await
            .context("cannot register the violation event schema (--schema-registry)")?,
    })
}

/// Loads ONNX Runtime, the rules and every model they use, and checks them against each other.
/// Blocking.
pub fn models(cfg: &WorkerConfig) -> anyhow::Result<(Arc<Planner>, Vec<Model>)> {
    let (env, lib) = crate::infer::runtime::init(cfg.ort_lib.as_deref())?;
    let ruleset = RuleSet::load(cfg.rules.as_deref())?;
    let dir = model::locate_pack(cfg.model_dir.as_deref()).ok_or_else(|| {
        anyhow!("no model pack found: pass --model-dir or set VIGIL_MODEL_DIR to the folder holding the manifests")
    })?;
    let mut models = Vec::new();
    for name in ruleset.models() {
        let manifest = model::find_manifest(&dir, &name)?;
        let m = Model::load(env, manifest, cfg.exec)?;
        tracing::info!(model = %m.manifest.name, version = %m.manifest.version, task = ?m.manifest.task,
            provider = m.provider, requested = %cfg.exec.device, max_batch = cfg.batch.policy(m.provider).max_batch,
            library = %lib.display(), dir = %dir.display(), "model loaded");
        models.push(m);
    }
    let planner = Planner::new(ruleset, models.iter().map(ModelInfo::of).collect())?;
    Ok((Arc::new(planner), models))
}
