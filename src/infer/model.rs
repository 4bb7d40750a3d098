//! The model pack: manifests describing ONNX models, their verification, and one ONNX Runtime
//! session per model.
//!
//! A manifest (`models/<name>.toml`) says everything the worker needs to feed and read a model:
//! file and sha256, task, input tensor name/size/layout/channel order/normalisation, output
//! tensor and labels, source and licence. A model that disagrees with its manifest (missing
//! file, wrong hash, other tensor names or shapes) is refused at start-up with the mismatch named.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{TensorRef, ValueType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use crate::decode::{ChannelOrder, InputSpec, Layout, Resize};

/// Errors loading a model. All of them mean "stop": the worker must not start with a model it
/// cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("model `{model}`: file {path} is missing; rebuild it with models/build.sh or fix `file` in its manifest")]
    MissingFile { model: String, path: PathBuf },
    #[error("model `{model}`: sha256 of {path} is {actual}, but the manifest says {expected}")]
    HashMismatch {
        model: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model `{model}`: {message}")]
    Contract { model: String, message: String },
    #[error("model `{model}`: ONNX Runtime: {message}")]
    Runtime { model: String, message: String },
    #[error("model `{model}` asks for device {device}, which is unavailable: {message}")]
    Device {
        model: String,
        device: Device,
        message: String,
    },
    #[error("no manifest named `{name}` in {dir} (found: {found})")]
    NotInPack {
        name: String,
        dir: PathBuf,
        found: String,
    },
}

/// What the model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One probability vector per input image.
    Classify,
    /// Boxes per input image (detector contract rows).
    Detect,
}

/// Which output tensor to read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Output tensor name in the ONNX graph.
    pub name: String,
}

/// A model manifest as written in `models/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short name rules refer to (`mask`, `face`).
    pub name: String,
    /// Version reported in observations and metrics.
    pub version: String,
    /// ONNX file, relative to the manifest.
    pub file: PathBuf,
    /// Hex sha256 of the file; checked at load.
    pub sha256: String,
    pub task: Task,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// Class names, in output order.
    pub labels: Vec<String>,
    /// Where the weights come from (package and version).
    pub source: String,
    /// Licence of the weights.
    pub licence: String,
    /// The pack's default model for its task (the built-in rules use it).
    #[serde(default)]
    pub default: bool,
    /// Free text: how the file was built and checked.
    #[serde(default)]
    pub notes: Option<String>,
    /// Directory the manifest was read from (not in the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Manifest {
    /// Reads and checks a manifest file (not yet the model it points to).
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let err = |message: String| ModelError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut m: Manifest = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        m.dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if m.labels.is_empty() {
            return Err(err("`labels` must name at least one class".into()));
        }
        if m.input.width == 0 || m.input.height == 0 {
            return Err(err(
                "`input.width` and `input.height` must be positive".into()
            ));
        }
        if m.input.std.contains(&0.0) {
            return Err(err("`input.std` must not contain 0".into()));
        }
        if m.sha256.len() != 64 || !m.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err("`sha256` must be 64 hex digits".into()));
        }
        Ok(m)
    }

    /// Absolute path of the ONNX file.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Checks that the file exists and matches the manifest's hash.
    pub fn verify_file(&self) -> Result<Vec<u8>, ModelError> {
        let path = self.model_path();
        let bytes = std::fs::read(&path).map_err(|_| ModelError::MissingFile {
            model: self.name.clone(),
            path: path.clone(),
        })?;
        let actual = hex(&Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&self.sha256) {
            return Err(ModelError::HashMismatch {
                model: self.name.clone(),
                path,
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the model pack directory: an explicit one, `VIGIL_MODEL_DIR`, or `models/` next to the
/// binary or in one of its (or the working directory's) ancestors, or `/usr/local/share/vigil/models`.
pub fn locate_pack(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VIGIL_MODEL_DIR") {
        return Some(PathBuf::from(p));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.push(PathBuf::from("/usr/local/share/vigil"));
    roots
        .into_iter()
        .map(|r| r.join("models"))
        .find(|d| d.is_dir() && has_manifests(d))
}

fn has_manifests(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.path().extension().is_some_and(|x| x == "toml"))
    })
}

/// Reads the manifest named `name` from the pack (the manifest's `name` field, not the file name).
pub fn find_manifest(dir: &Path, name: &str) -> Result<Manifest, ModelError> {
    let mut found = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Manifest {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        let m = Manifest::load(&path)?;
        if m.name == name {
            return Ok(m);
        }
        found.push(m.name);
    }
    Err(ModelError::NotInPack {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        found: found.join(", "),
    })
}

pub use super::provider::Device;

/// How sessions are created.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionConfig {
    pub device: Device,
    /// Threads ONNX Runtime uses inside one operator (0 = its default).
    pub intra_threads: usize,
    /// Whether idle ONNX Runtime threads spin (burning cores other sessions need).
    pub spinning: bool,
}

/// One detected object, as the detector contract defines it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    /// Index into the detector's labels.
    pub class_id: u32,
    pub score: f32,
    /// `[x1, y1, x2, y2]`, normalised to the frame (0..1), clamped.
    pub bbox: [f32; 4],
}

/// What a model returns for one image.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelOutput {
    /// Class scores, in label order (classifiers).
    Scores(Vec<f32>),
    /// Detections, best first (detectors).
    Detections(Vec<Detection>),
}

/// A loaded, verified model with its ONNX Runtime session.
pub struct Model {
    pub manifest: Manifest,
    /// The execution provider that really runs this session (`CPUExecutionProvider`, …).
    pub provider: &'static str,
    session: Session,
    /// Reused input buffer, so a batch costs no allocation once warm.
    input: Vec<f32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Model {
    /// Verifies the file against the manifest, creates the session on the requested device and
    /// checks the graph's tensors against the manifest.
    pub fn load(
        env: &ort::environment::Environment,
        manifest: Manifest,
        exec: ExecutionConfig,
    ) -> Result<Model, ModelError> {
        let bytes = manifest.verify_file()?;
        let name = manifest.name.clone();
        let rt = |e: ort::Error| ModelError::Runtime {
            model: name.clone(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(env)
            .map_err(rt)?
            .with_intra_op_spinning(exec.spinning)
            .map_err(|e| rt(e.into()))?;
        if exec.intra_threads > 0 {
            builder = builder
                .with_intra_threads(exec.intra_threads)
                .map_err(|e| rt(e.into()))?;
        }
        let provider =
            super::provider::register(&mut builder, exec.device, &name).map_err(|u| {
                ModelError::Device {
                    model: name.clone(),
                    device: u.device,
                    message: u.message,
                }
            })?;
        let session = builder.commit_from_memory(&bytes).map_err(rt)?;
        check_contract(&session, &manifest)?;
        Ok(Model {
            manifest,
            provider,
            session,
            input: Vec::new(),
        })
    }

    /// Loads the model named `name` from the pack in `dir`.
    pub fn load_named(
        env: &ort::environment::Environment,
        dir: &Path,
        name: &str,
        exec: ExecutionConfig,
    ) -> Result<Model, ModelError> {
        Model::load(env, find_manifest(dir, name)?, exec)
    }

    /// Number of values one preprocessed image occupies in the input tensor.
    pub fn item_len(&self) -> usize {
        3 * self.manifest.input.width as usize * self.manifest.input.height as usize
    }

    /// Runs the model on a batch of preprocessed images and returns one output per image.
    pub fn infer(&mut self, items: &[&[f32]]) -> Result<Vec<ModelOutput>, ModelError> {
        match self.manifest.task {
            Task::Classify => Ok(self
                .classify(items)?
                .into_iter()
                .map(ModelOutput::Scores)
                .collect()),
            Task::Detect => Ok(self
                .detect(items)?
                .into_iter()
                .map(ModelOutput::Detections)
                .collect()),
        }
    }

    /// Runs a detector on a batch and returns each image's detections (contract rows
    /// `[batch_index, class_id, score, x1, y1, x2, y2]`, coordinates normalised to the frame).
    pub fn detect(&mut self, items: &[&[f32]]) -> Result<Vec<Vec<Detection>>, ModelError> {
        let n = items.len();
        let (shape, data) = self.run(items)?;
        if shape.len() != 2 || shape[1] != 7 {
            return Err(ModelError::Contract {
                model: self.manifest.name.clone(),
                message: format!("detections have shape {shape:?}, expected [K, 7]"),
            });
        }
        let mut out = vec![Vec::new(); n];
        for row in data.chunks_exact(7) {
            let b = row[0];
            if b < 0.0 || b as usize >= n || !row.iter().all(|v| v.is_finite()) {
                continue;
            }
            let c = |v: f32| v.clamp(0.0, 1.0);
            let (x1, y1, x2, y2) = (c(row[3]), c(row[4]), c(row[5]), c(row[6]));
            if x2 <= x1 || y2 <= y1 {
                continue;
            }
            out[b as usize].push(Detection {
                class_id: row[1].max(0.0) as u32,
                score: row[2],
                bbox: [x1, y1, x2, y2],
            });
        }
        for dets in &mut out {
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        Ok(out)
    }

    /// Runs a classifier on a batch of preprocessed images (each `item_len()` values) and returns
    /// one score vector per image, in label order.
    pub fn classify(&mut self, items: &[&[f32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let n = items.len();
        let classes = self.manifest.labels.len();
        let name = self.manifest.name.clone();
        let (out_shape, data) = self.run(items)?;
        if out_shape.len() != 2 || out_shape[0] as usize != n || out_shape[1] as usize != classes {
            return Err(ModelError::Contract {
                model: name,
                message: format!("output shape {out_shape:?}, expected [{n}, {classes}]"),
            });
        }
        Ok(data.chunks(classes).map(<[f32]>::to_vec).collect())
    }

    /// Runs the graph on a batch; returns the output tensor's shape and values.
    fn run(&mut self, items: &[&[f32]]) -> Result<(Vec<i64>, Vec<f32>), ModelError> {
        let n = items.len();
        let (w, h) = (
            self.manifest.input.width as usize,
            self.manifest.input.height as usize,
        );
        let shape = match self.manifest.input.layout {
            Layout::NCHW => [n, 3, h, w],
            Layout::NHWC => [n, h, w, 3],
        };
        for item in items {
            if item.len() != self.item_len() {
                return Err(ModelError::Contract {
                    model: self.manifest.name.clone(),
                    message: format!(
                        "an input has {} values, expected {}",
                        item.len(),
                        self.item_len()
                    ),
                });
            }
        }
        // A batch of one (the usual case at a steady rate) is run from the item itself: copying
        // a 640x384 frame's tensor into the batch buffer cost 4 % of the worker's CPU under load.
        let input: &[f32] = if let [item] = items {
            item
        } else {
            self.input.clear();
            for item in items {
                self.input.extend_from_slice(item);
            }
            &self.input
        };
        let name = self.manifest.name.clone();
        let rt = |e: ort::Error| ModelError::Runtime {
            model: name.clone(),
            message: e.to_string(),
        };
        let tensor = TensorRef::from_array_view((shape, input)).map_err(rt)?;
        let outputs = self
            .session
            .run(ort::inputs![self.manifest.input.name.as_str() => tensor])
            .map_err(rt)?;
        let (out_shape, data) = outputs[self.manifest.output.name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(rt)?;
        Ok((out_shape.iter().copied().collect(), data.to_vec()))
    }
}

/// Checks the session's input and output tensors against the manifest.
fn check_contract(session: &Session, m: &Manifest) -> Result<(), ModelError> {
    let contract = |message: String| ModelError::Contract {
        model: m.name.clone(),
        message,
    };
    let input = session
        .inputs()
        .iter()
        .find(|i| i.name() == m.input.name)
        .ok_or_else(|| {
            contract(format!(
                "the graph has no input `{}` (it has: {})",
                m.input.name,
                session
                    .inputs()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let ValueType::Tensor { shape, .. } = input.dtype() else {
        return Err(contract(format!(
            "input `{}` is not a tensor",
            m.input.name
        )));
    };
    let (w, h) = (m.input.width as i64, m.input.height as i64);
    let expected = match m.input.layout {
        Layout::NCHW => [-1, 3, h, w],
        Layout::NHWC => [-1, h, w, 3],
    };
    let dims: Vec<i64> = shape.iter().copied().collect();
    let fits = dims.len() == 4
        && dims.iter().zip(expected).enumerate().all(|(i, (&d, e))| {
            if i == 0 {
                d == -1
            } else {
                d == e || d == -1
            }
        });
    if !fits {
        return Err(contract(format!(
            "input `{}` has shape {dims:?}; the manifest ({:?}, {}x{}) needs {:?} with a dynamic batch",
            m.input.name, m.input.layout, w, h, expected
        )));
    }
    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == m.output.name)
        .ok_or_else(|| {
            contract(format!(
                "the graph has no output `{}` (it has: {})",
                m.output.name,
                session
                    .outputs()
                    .iter()
                    .map(|o| o.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    if let ValueType::Tensor { shape, .. } = output.dtype() {
        let last = shape.iter().last().copied().unwrap_or(0);
        let (want, what) = match m.task {
            Task::Classify => (
                m.labels.len(),
                "classes, but the manifest lists that many labels",
            ),
            Task::Detect => (
                7,
                "columns, but detector rows are [batch, class, score, x1, y1, x2, y2]",
            ),
        };
        if shape.len() != 2 || (last != -1 && last as usize != want) {
            return Err(contract(format!(
                "output `{}` has shape {:?}: expected rank 2 with {want} {what}",
                m.output.name,
                shape.iter().collect::<Vec<_>>()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "mask"
version = "1"
file = "m.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
task = "classify"
labels = ["mask", "no_mask"]
source = "test"
licence = "MIT"
[input]
name = "input_1"
width = 224
height = 224
layout = "NCHW"
channels = "RGB"
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]
[output]
name = "dense_1"
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn parses_a_manifest() {
        let (_d, p) = write(GOOD);
        let m = Manifest::load(&p).unwrap();
        assert_eq!(m.name, "mask");
        assert_eq!(m.input.layout, Layout::NCHW);
        assert_eq!(m.model_path(), p.parent().unwrap().join("m.onnx"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let (_d, p) = write(&GOOD.replace("width = 224", "widht = 224"));
        let e = Manifest::load(&p).unwrap_err().to_string();
        assert!(e.contains("widht"), "{e}");
    }

    #[test]
    fn missing_file_and_bad_hash_are_refused() {
        let (d, p) = write(GOOD);
        let m = Manifest::load(&p).unwrap();
        assert!(matches!(
            m.verify_file(),
            Err(ModelError::MissingFile { .. })
        ));
        std::fs::write(d.path().join("m.onnx"), b"not a model").unwrap();
        let e = m.verify_file().unwrap_err();
        assert!(matches!(e, ModelError::HashMismatch { .. }), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let (_d, p) = write(&GOOD.replace("std = [127.5, 127.5, 127.5]", "std = [0.0, 1.0, 1.0]"));
        assert!(Manifest::load(&p).unwrap_err().to_string().contains("std"));
        let (_d, p) = write(&GOOD.replace("sha256 = \"0000", "sha256 = \"zz00"));
        assert!(Manifest::load(&p)
            .unwrap_err()
            .to_string()
            .contains("sha256"));
    }
}
