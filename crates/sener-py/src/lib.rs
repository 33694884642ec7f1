//! `sener._sener`: the Python bindings. A thin layer over the `sener` library: models load and
//! extract in Rust with the GIL released (`Python::detach`), several Python threads may extract
//! with one `Extractor` at once, every library error becomes a Python exception of the fitting
//! type with the CLI's message, and no panic reaches Python. The pure-Python package
//! (`python/sener/`) re-exports this module and adds the spaCy and Ray integrations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use sener::extract::{ExtractOptions, Extraction, Extractor as RustExtractor};
use sener::metric::MetricResult;

/// A library error as the Python exception a user expects: missing files and folders are
/// `FileNotFoundError`, everything the caller can fix is `ValueError`, the rest `RuntimeError`.
fn to_py(e: sener::Error) -> PyErr {
    use sener::Error as E;
    let msg = e.to_string();
    match &e {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        E::Model { message, .. } if message.contains("no such") || message.contains("not found") => PyFileNotFoundError::new_err(msg),
        E::Io { .. } | E::Candle(_) => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// Runs `f` and turns a panic into a `RuntimeError` (never an abort of the interpreter).
fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(PyRuntimeError::new_err(format!("internal error in sener (please report it): {what}")))
        }
    }
}

fn device(name: &str) -> PyResult<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s.starts_with("cuda") => {
            let n = s.strip_prefix("cuda").and_then(|r| r.strip_prefix(':')).unwrap_or("0");
            let n: usize = n.parse().map_err(|_| PyValueError::new_err(format!("device {s:?}: bad ordinal")))?;
            candle_core::Device::new_cuda(n).map_err(|e| PyValueError::new_err(format!("device {s:?}: {e}")))
        }
        other => Err(PyValueError::new_err(format!("device {other:?}: expected \"cpu\" or \"cuda[:N]\""))),
    }
}

/// JSON → Python objects (dicts, lists, str, int, float, bool, None).
fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as V;
    Ok(match v {
        V::Null => py.None().into_bound(py),
        V::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        V::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        V::String(s) => s.into_pyobject(py)?.into_any(),
        V::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(json_to_py(py, x)?)?;
            }
            l.into_any()
        }
        V::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// Python objects → JSON (for `train(**config)`): dicts with str keys, lists/tuples, str, int,
/// float, bool, None, and `os.PathLike` (as its string).
fn py_to_json(v: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    use serde_json::Value as V;
    if v.is_none() {
        return Ok(V::Null);
    }
    if let Ok(b) = v.extract::<bool>() {
        return Ok(V::Bool(b));
    }
    if let Ok(i) = v.extract::<i64>() {
        return Ok(V::from(i));
    }
    if let Ok(f) = v.extract::<f64>() {
        return Ok(serde_json::Number::from_f64(f).map(V::Number).unwrap_or(V::Null));
    }
    if let Ok(s) = v.extract::<String>() {
        return Ok(V::String(s));
    }
    if let Ok(p) = v.extract::<PathBuf>() {
        return Ok(V::String(p.display().to_string()));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let mut o = serde_json::Map::new();
        for (k, x) in d.iter() {
            let k: String = k.extract().map_err(|_| PyValueError::new_err("config keys must be strings"))?;
            o.insert(k, py_to_json(&x)?);
        }
        return Ok(V::Object(o));
    }
    if let Ok(items) = v.extract::<Vec<Bound<'_, PyAny>>>() {
        return Ok(V::Array(items.iter().map(py_to_json).collect::<PyResult<_>>()?));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!("cannot use a {} in a training config", v.get_type().name()?)))
}

fn entities<'py>(py: Python<'py>, r: &Extraction) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for e in &r.entities {
        let d = PyDict::new(py);
        d.set_item("start", e.start)?;
        d.set_item("end", e.end)?;
        d.set_item("text", &e.text)?;
        d.set_item("label", &e.label)?;
        d.set_item("score", e.score)?;
        out.append(d)?;
    }
    Ok(out)
}

fn metric_dict<'py>(py: Python<'py>, r: &MetricResult, chars: bool) -> PyResult<Bound<'py, PyAny>> {
    let mut v = serde_json::to_value(r).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    v["macro"] = serde_json::to_value(r.macro_avg()).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    v["unit"] = serde_json::Value::String(if chars { "char" } else { "word" }.into());
    json_to_py(py, &v)
}

/// A loaded SeNER model, ready to extract entities from texts of any length.
///
/// Thread-safe: `extract` and `extract_batch` release the GIL, and several threads may use one
/// extractor at once.
#[pyclass(frozen, module = "sener._sener")]
struct Extractor {
    inner: Arc<RustExtractor>,
    config: serde_json::Value,
}

impl Extractor {
    fn options(&self, threshold: Option<f32>, flat: bool) -> PyResult<ExtractOptions> {
        if let Some(t) = threshold {
            if !(0.0..=1.0).contains(&t) || t.is_nan() {
                return Err(PyValueError::new_err(format!("threshold {t} is not a probability in [0, 1]")));
            }
        }
        Ok(self.inner.options.overridden(threshold, flat))
    }
}

#[pymethods]
impl Extractor {
    /// Entities of one text: a list of dicts with `start`, `end` (Python `str` indices: code
    /// points, end exclusive), `text` (= `text[start:end]`), `label` and `score`.
    #[pyo3(signature = (text, threshold=None, flat=false))]
    fn extract<'py>(&self, py: Python<'py>, text: &str, threshold: Option<f32>, flat: bool) -> PyResult<Bound<'py, PyList>> {
        let opts = self.options(threshold, flat)?;
        let inner = self.inner.clone();
        let text = text.to_owned();
        let r = py.detach(move || guarded(|| inner.extract_with(&text, &opts).map_err(to_py)))?;
        entities(py, &r)
    }

    /// Entities of several texts, in input order (a list per text); the segments of each
    /// `batch_size` texts share forward passes.
    #[pyo3(signature = (texts, threshold=None, flat=false, batch_size=8))]
    fn extract_batch<'py>(&self, py: Python<'py>, texts: Vec<String>, threshold: Option<f32>, flat: bool, batch_size: usize) -> PyResult<Bound<'py, PyList>> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let opts = self.options(threshold, flat)?;
        let inner = self.inner.clone();
        let results: Vec<Extraction> = py.detach(move || {
            guarded(|| {
                let mut out = Vec::with_capacity(texts.len());
                for chunk in texts.chunks(batch_size) {
                    let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
                    out.extend(inner.extract_batch_until(&chunk, &opts, &|| false).map_err(to_py)?);
                }
                Ok(out)
            })
        })?;
        let out = PyList::empty(py);
        for r in &results {
            out.append(entities(py, r)?)?;
        }
        Ok(out)
    }

    /// The entity types, in the model's order.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.inner.model.config.labels.clone()
    }

    /// The model's `sener.json`, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.config)
    }

    fn __repr__(&self) -> String {
        format!("<sener.Extractor {} labels, splitter {}>", self.inner.model.config.labels.len(), self.inner.model.config.splitter)
    }
}

/// Loads a model folder, or a Hugging Face Hub id `org/name[@revision]` (fetched with its base
/// encoder into the Hub cache), on `device` ("cpu" or "cuda[:N]").
#[pyfunction]
#[pyo3(signature = (model, device="cpu"))]
fn load(py: Python<'_>, model: PathBuf, device: &str) -> PyResult<Extractor> {
    let dev = self::device(device)?;
    py.detach(move || {
        guarded(|| {
            let dir = sener::hub::resolve_model(&model).map_err(to_py)?;
            let ex = RustExtractor::load_on(&dir, &dev).map_err(to_py)?;
            let config = serde_json::to_value(&ex.model.config).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            Ok(Extractor { inner: Arc::new(ex), config })
        })
    })
}

/// The official metric of a model (an `Extractor`, or a model folder / Hub id to load) on
/// annotated documents, as `sener eval` computes it: micro, macro, per type and per length.
/// `data` is read in `format` (sener, scirex, conll, conll-bioes, gliner, brat, jsonl, text);
/// formats without their own words, and `raw=True`, score extraction from raw text on characters.
#[pyfunction]
#[pyo3(signature = (model, data, format="sener", raw=false, threshold=None))]
fn evaluate<'py>(py: Python<'py>, model: &Bound<'py, PyAny>, data: PathBuf, format: &str, raw: bool, threshold: Option<f32>) -> PyResult<Bound<'py, PyAny>> {
    let ex: Arc<RustExtractor> = match model.cast::<Extractor>() {
        Ok(e) => e.get().inner.clone(),
        Err(_) => {
            let path: PathBuf = model.extract().map_err(|_| pyo3::exceptions::PyTypeError::new_err("model must be a sener.Extractor, a model folder or a Hub id"))?;
            load(py, path, "cpu")?.inner
        }
    };
    let fmt: sener_data::readers::Format = format.parse().map_err(|e: sener_data::DataError| PyValueError::new_err(e.to_string()))?;
    if let Some(t) = threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        return Err(PyValueError::new_err(format!("threshold {t} is not a probability in [0, 1]")));
    }
    let (m, chars) = py.detach(move || {
        guarded(|| {
            if !data.exists() {
                return Err(PyFileNotFoundError::new_err(format!("{}: no such file or folder", data.display())));
            }
            let read = sener_data::readers::read_path(fmt, &data).map_err(|e| PyValueError::new_err(e.to_string()))?;
            let opts = ex.options.overridden(threshold, false);
            ex.evaluate(&read.documents, raw || !fmt.gives_words(), &opts).map_err(to_py)
        })
    })?;
    metric_dict(py, &m, chars)
}

/// Trains a model with the same keys as `sener train`'s config (`train`, `base`, `output`,
/// `epochs`, `recipe`, `max_time` in seconds, …), printing the same progress; Ctrl-C stops at the
/// next optimiser step with a resume checkpoint (`resume=True` continues). Returns the report.
#[pyfunction]
#[pyo3(signature = (**config))]
fn train<'py>(py: Python<'py>, config: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
    let value = match config {
        Some(c) => py_to_json(c.as_any())?,
        None => serde_json::json!({}),
    };
    let device_name = value.get("device").and_then(|d| d.as_str()).unwrap_or("cpu").to_string();
    let mut value = value;
    if let Some(o) = value.as_object_mut() {
        o.remove("device");
    }
    let cfg = sener::train::trainer::TrainConfig::from_value(value).map_err(to_py)?;
    cfg.validate().map_err(to_py)?;
    if cfg.train.as_os_str().is_empty() || cfg.base.as_os_str().is_empty() {
        return Err(PyValueError::new_err("train and base are required"));
    }
    let dev = device(&device_name)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let report = py.detach(move || {
        guarded(|| {
            let (mut log, _) = sener::train::trainer::open_run_files(&cfg, None).map_err(to_py)?;
            let mut last_print = std::time::Instant::now();
            let progress = move |p: &sener::train::trainer::Progress| {
                // Ctrl-C arrives as a Python signal: look for it between micro-batches.
                if Python::attach(|py| py.check_signals()).is_err() {
                    stop_flag.store(true, Ordering::SeqCst);
                }
                if last_print.elapsed().as_secs_f64() >= 5.0 || p.micro == p.micros {
                    last_print = std::time::Instant::now();
                    let tps = if p.seconds > 0.0 { p.tokens as f64 / p.seconds } else { 0.0 };
                    eprintln!(
                        "epoch {}/{} micro-batch {}/{} step {}/{} loss {:.4} lr {:.2e} {:.0} tok/s",
                        p.epoch + 1,
                        p.epochs,
                        p.micro,
                        p.micros,
                        p.step,
                        p.total_steps,
                        p.loss,
                        p.lr_new,
                        tps
                    );
                }
            };
            let hooks = sener::train::trainer::TrainHooks { stop: Some(stop.clone()), progress: Some(Box::new(progress)), collective: None };
            sener::train::trainer::train_with(&cfg, &dev, &mut log, hooks).map_err(to_py)
        })
    })?;
    let v = serde_json::to_value(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    if report.interrupted {
        eprintln!("interrupted: the resume checkpoint is written; train again with the same config and resume=True to continue");
    }
    json_to_py(py, &v)
}

#[pymodule]
fn _sener(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Extractor>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
