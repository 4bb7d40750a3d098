//! Finds and loads the ONNX Runtime shared library once per process.
//!
//! `ort` is built with `load-dynamic`: the library is not linked but opened at start-up, so the
//! same binary runs with the CPU build (PyPI `onnxruntime`) or the CUDA build
//! (`onnxruntime-gpu`). Search order: an explicit path (`--ort-lib` / `VIGIL_ORT_LIB`),
//! `ORT_DYLIB_PATH`, then `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`
//! under the binary's and the working directory's ancestors, then system locations.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "the ONNX Runtime library was not found (looked in: {searched}); run scripts/bootstrap.sh, \
         or pass --ort-lib / set VIGIL_ORT_LIB to a libonnxruntime.so"
    )]
    NotFound { searched: String },
    #[error("could not load the ONNX Runtime library {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime was already loaded from {loaded}, cannot switch to {requested}")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
}

struct Loaded {
    path: PathBuf,
    env: Environment,
}

static RUNTIME: OnceLock<Loaded> = OnceLock::new();

/// Places searched for the library, in order, when none is given explicitly.
pub fn candidates() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    let mut found = Vec::new();
    for root in roots {
        let lib = root.join(".venv").join("lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        let mut pythons: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        pythons.sort();
        for py in pythons {
            let capi = py.join("site-packages/onnxruntime/capi");
            if let Ok(files) = std::fs::read_dir(&capi) {
                let mut libs: Vec<_> = files
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                libs.sort();
                found.extend(libs.into_iter().rev());
            }
        }
    }
    for sys in [
        "/usr/local/lib/vigil/libonnxruntime.so",
        "/usr/local/lib/libonnxruntime.so",
        "/usr/lib/libonnxruntime.so",
    ] {
        found.push(PathBuf::from(sys));
    }
    found
}

/// Resolves which library file to load.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let all = candidates();
    all.iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound {
            searched: all
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Loads ONNX Runtime (once) and returns its environment and the path it came from.
pub fn init(
    explicit: Option<&Path>,
) -> Result<(&'static Environment, &'static Path), RuntimeError> {
    if let Some(l) = RUNTIME.get() {
        if let Some(p) = explicit {
            if p != l.path {
                return Err(RuntimeError::AlreadyLoaded {
                    loaded: l.path.clone(),
                    requested: p.to_path_buf(),
                });
            }
        }
        return Ok((&l.env, &l.path));
    }
    let path = locate(explicit)?;
    if !path.is_file() {
        return Err(RuntimeError::Load {
            message: "no such file".into(),
            path,
        });
    }
    let load_err = |message: String| RuntimeError::Load {
        path: path.clone(),
        message,
    };
    let env = ort::init_from(&path)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("vigil")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    let loaded = RUNTIME.get_or_init(|| Loaded { path, env });
    Ok((&loaded.env, &loaded.path))
}
