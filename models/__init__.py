"""`vigil_tools`: the project's model tooling as one package (this folder, `models/`, declared
in the top-level `pyproject.toml`, installed into `.venv` by `scripts/bootstrap.sh` as an
editable package). Each tool still runs as a file (`.venv/bin/python models/evaluate.py ...`,
the commands the READMEs give); the tools and the scripts in `scripts/` import each other as
`vigil_tools.<module>`, never by path. The environment is pinned in `scripts/requirements*.txt`.

Shared pieces (imported by the tools, no command of their own):
- `geometry`: the worker's pixel geometry (decode reduction, letterbox, crop rectangle, close-up
  canvas, IoU, detection matching), checked against the Rust worker by `tests/golden.rs`.
- `detector_head`: the ONNX graph builder and detection head every detector build ends with,
  TFLite conversion, manifests.
- `finetune`: MobileNetV2's last blocks trained on cached activations (the mask classifier).
- `composite`: the licensed test animal pasted into real frames (the `no_animals` measurements).
- `topics`: vigil's output topics read from outside (confluent-kafka, fastavro).

Builds (each rewrites its ONNX file and manifest, checked against the original framework;
`models/build.sh` runs them all): `build_mask_classifier`, `build_ssd_face`, `build_blazeface`,
`build_yunet`, `build_palm`, `build_objectron`, `build_objectron_int8`, `build_nose_check`.

Training, on `../shared/data` with the fixed splits (`splits`): `train_mask_classifier`
(`mask-v2`), `train_gloves_classifier` (`gloves`).

Measurements: `evaluate` (accuracy through a real broker and worker), `evaluate_episodes` (the
same, as episodes), `cv_thresholds`, `measure_min_box`, `measure_nose_mesh`, `measure_yunet`,
`measure_detectors`, `quantize` (INT8 copies weighed against fp32).
"""
