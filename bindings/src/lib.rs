//! Python bindings: `moe.Model` over the engine's public API. The GIL is released while the
//! engine works; engine errors become `ValueError` (bad input) or `RuntimeError`.

use moe::backend::{CpuBackend, CudaBackend};
use moe::generate::{Completion as RsCompletion, GenerateRequest, Prompt};
use moe::{ChatMessage, Device, Engine, Error, LoadOptions, ModelSource, SamplingParams};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use std::sync::Arc;

fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidSampling { .. }
        | Error::EmptyPrompt
        | Error::TokenOutOfRange { .. }
        | Error::ContextOverflow { .. }
        | Error::ChatTemplate(_)
        | Error::InvalidRequest(_)
        | Error::Preset { .. }
        | Error::NoModel { .. }
        | Error::Io { .. }
        | Error::Tokenizer(_) => PyValueError::new_err(e.to_string()),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

#[pyclass(frozen, get_all, module = "moe")]
pub struct Completion {
    text: String,
    token_ids: Vec<u32>,
    prompt_ids: Vec<u32>,
    finish_reason: String,
    stop: Option<String>,
    logprobs: Option<Vec<f32>>,
    top_logprobs: Option<Vec<Vec<(u32, f32)>>>,
}

#[pymethods]
impl Completion {
    fn __repr__(&self) -> String {
        format!(
            "Completion(text={:?}, finish_reason={:?}, tokens={})",
            self.text,
            self.finish_reason,
            self.token_ids.len()
        )
    }
}

impl From<RsCompletion> for Completion {
    fn from(c: RsCompletion) -> Self {
        Completion {
            finish_reason: c.finish_reason.as_str().to_string(),
            logprobs: c
                .logprobs
                .as_ref()
                .map(|v| v.iter().map(|l| l.logprob).collect()),
            top_logprobs: c.logprobs.as_ref().map(|v| {
                v.iter()
                    .map(|l| {
                        l.top_logprobs
                            .iter()
                            .map(|t| (t.token_id, t.logprob))
                            .collect()
                    })
                    .collect()
            }),
            text: c.text,
            token_ids: c.token_ids,
            prompt_ids: c.prompt_ids,
            stop: c.stop,
        }
    }
}

#[pyclass(frozen, get_all, module = "moe")]
pub struct PromptLogprobs {
    prompt_ids: Py<PyAny>,
    prompt_logprobs: Py<PyAny>,
    token_ids: Py<PyAny>,
    logprobs: Py<PyAny>,
}

/// A loaded engine on the device it was asked for (`Engine` is generic over its backend).
#[derive(Clone)]
enum AnyEngine {
    Cpu(Arc<Engine<CpuBackend>>),
    Cuda(Arc<Engine<CudaBackend>>),
}

/// Evaluates `$body` with `$e` bound to the engine, whichever its backend (the body is compiled
/// once per backend).
macro_rules! with_engine {
    ($any:expr, |$e:ident| $body:expr) => {
        match $any {
            AnyEngine::Cpu($e) => $body,
            AnyEngine::Cuda($e) => $body,
        }
    };
}

impl AnyEngine {
    fn tokenizer(&self) -> &moe::Tokenizer {
        with_engine!(self, |e| &e.tokenizer)
    }
    fn info(&self) -> &moe::ModelInfo {
        with_engine!(self, |e| &e.info)
    }
    fn config(&self) -> &moe::ModelConfig {
        with_engine!(self, |e| e.config())
    }
}

#[pyclass(frozen, module = "moe")]
pub struct Tokenizer {
    engine: AnyEngine,
}

fn messages(obj: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    let list = obj.cast::<PyList>().map_err(|_| {
        PyValueError::new_err("messages must be a list of {\"role\", \"content\"} dicts")
    })?;
    list.iter()
        .map(|m| {
            let d = m
                .cast::<PyDict>()
                .map_err(|_| PyValueError::new_err("each message must be a dict"))?;
            let get = |k: &str| -> PyResult<String> {
                d.get_item(k)?
                    .ok_or_else(|| PyValueError::new_err(format!("a message lacks `{k}`")))?
                    .extract::<String>()
            };
            Ok(ChatMessage {
                role: get("role")?,
                content: get("content")?,
            })
        })
        .collect()
}

#[pymethods]
impl Tokenizer {
    #[getter]
    fn vocab_size(&self) -> usize {
        self.engine.tokenizer().vocab_size()
    }
    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.engine.tokenizer().bos_id()
    }
    #[getter]
    fn eos_id(&self) -> Option<u32> {
        self.engine.tokenizer().eos_id()
    }
    #[pyo3(signature = (text, add_special_tokens = true))]
    fn encode(&self, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        self.engine
            .tokenizer()
            .encode(text, add_special_tokens)
            .map_err(to_py)
    }
    #[pyo3(signature = (ids, skip_special_tokens = true))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.engine
            .tokenizer()
            .decode(&ids, skip_special_tokens)
            .map_err(to_py)
    }
    #[pyo3(signature = (messages, add_generation_prompt = true))]
    fn apply_chat_template(
        &self,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        self.engine
            .tokenizer()
            .apply_chat_template(&self::messages(messages)?, add_generation_prompt)
            .map_err(to_py)
    }
    #[pyo3(signature = (messages, add_generation_prompt = true))]
    fn encode_chat(
        &self,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<Vec<u32>> {
        self.engine
            .tokenizer()
            .encode_chat(&self::messages(messages)?, add_generation_prompt)
            .map_err(to_py)
    }
}

#[pyclass(frozen, module = "moe")]
pub struct Model {
    engine: AnyEngine,
    device: Device,
}

/// One prompt or a list of them: text, token ids, or lists of either.
fn prompts(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Prompt>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(vec![Prompt::Text(s.extract::<String>()?)]);
    }
    let list = obj.cast::<PyList>().map_err(|_| {
        PyValueError::new_err("prompts must be a str, a list of token ids, or a list of those")
    })?;
    if list.is_empty() {
        return Err(PyValueError::new_err("prompts is an empty list"));
    }
    if list.get_item(0)?.extract::<u32>().is_ok() {
        return Ok(vec![Prompt::Tokens(obj.extract::<Vec<u32>>()?)]);
    }
    list.iter()
        .map(|p| {
            if let Ok(s) = p.extract::<String>() {
                Ok(Prompt::Text(s))
            } else {
                Ok(Prompt::Tokens(p.extract::<Vec<u32>>().map_err(|_| {
                    PyValueError::new_err("a prompt must be a str or a list of token ids")
                })?))
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn sampling(
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    logprobs: bool,
    top_logprobs: usize,
    ignore_eos: bool,
) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        seed,
        stop: stop.unwrap_or_default(),
        logprobs: logprobs || top_logprobs > 0,
        top_logprobs,
        ignore_eos,
        ..SamplingParams::default()
    }
}

impl Model {
    fn run(
        &self,
        py: Python<'_>,
        prompts: Vec<Prompt>,
        params: SamplingParams,
        n: usize,
    ) -> PyResult<Vec<Completion>> {
        if n == 0 {
            return Err(PyValueError::new_err("n must be at least 1"));
        }
        let mut reqs = vec![];
        for p in prompts {
            for i in 0..n {
                let mut params = params.clone();
                params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
                reqs.push(GenerateRequest::new(p.clone(), params));
            }
        }
        let engine = self.engine.clone();
        let out = py
            .detach(move || with_engine!(engine, |e| e.generate(&reqs)))
            .map_err(to_py)?;
        Ok(out.into_iter().map(Completion::from).collect())
    }
}

#[pymethods]
impl Model {
    /// `model`: a model directory, a `models.toml` preset, or None for the embedded student.
    /// `device`: `cpu`, `cuda` or `cuda:N`; a CUDA device that cannot be opened raises
    /// RuntimeError saying why.
    /// `bf16_activations`: round activations to bf16 in products with bf16 weights (faster
    /// prefill on CPUs with AVX-512 BF16, transformers' bf16 numerics).
    #[new]
    #[pyo3(signature = (model = None, threads = None, bf16_activations = false, device = "cpu"))]
    fn new(
        py: Python<'_>,
        model: Option<String>,
        threads: Option<usize>,
        bf16_activations: bool,
        device: &str,
    ) -> PyResult<Self> {
        let device = Device::parse(device).map_err(|e| PyValueError::new_err(e.to_string()))?;
        if let Some(t) = threads {
            if t == 0 {
                return Err(PyValueError::new_err("threads must be at least 1"));
            }
            if rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build_global()
                .is_err()
                && rayon::current_num_threads() != t
            {
                return Err(PyRuntimeError::new_err(format!(
                    "the engine's thread pool already runs {} threads in this process",
                    rayon::current_num_threads()
                )));
            }
        }
        let source = ModelSource::parse(model.as_deref());
        let engine = py
            .detach(move || -> moe::Result<AnyEngine> {
                let opts = LoadOptions {
                    bf16_activations,
                    ..Default::default()
                };
                Ok(match device {
                    Device::Cpu => {
                        AnyEngine::Cpu(Arc::new(Engine::load_with(&source, CpuBackend, opts)?))
                    }
                    Device::Cuda(n) => {
                        let backend = CudaBackend::new(n).map_err(|e| {
                            let why = match e {
                                Error::Device(m) => m,
                                other => other.to_string(),
                            };
                            Error::Device(format!("cannot use {device}: {why}"))
                        })?;
                        AnyEngine::Cuda(Arc::new(Engine::load_with(&source, backend, opts)?))
                    }
                })
            })
            .map_err(to_py)?;
        Ok(Model { engine, device })
    }

    #[getter]
    fn name(&self) -> String {
        self.engine.info().name.clone()
    }
    /// `cpu` or `cuda:N`.
    #[getter]
    fn device(&self) -> String {
        self.device.to_string()
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.engine.config().vocab_size
    }
    #[getter]
    fn context_length(&self) -> usize {
        self.engine.info().context_length
    }
    #[getter]
    fn tokenizer(&self) -> Tokenizer {
        Tokenizer {
            engine: self.engine.clone(),
        }
    }

    #[pyo3(signature = (prompts, *, max_tokens = 64, temperature = 0.0, top_p = 1.0, top_k = 0, min_p = 0.0,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None, n = 1, stop = None,
        logprobs = false, top_logprobs = 0, ignore_eos = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        repetition_penalty: f32,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: Option<u64>,
        n: usize,
        stop: Option<Vec<String>>,
        logprobs: bool,
        top_logprobs: usize,
        ignore_eos: bool,
    ) -> PyResult<Vec<Completion>> {
        let p = sampling(
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop,
            logprobs,
            top_logprobs,
            ignore_eos,
        );
        self.run(py, self::prompts(prompts)?, p, n)
    }

    /// One conversation (a list of messages) or a list of conversations, rendered with the chat
    /// template.
    #[pyo3(signature = (conversations, *, max_tokens = 64, temperature = 0.0, top_p = 1.0, top_k = 0, min_p = 0.0,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None, n = 1, stop = None,
        logprobs = false, top_logprobs = 0, ignore_eos = false))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        conversations: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        repetition_penalty: f32,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: Option<u64>,
        n: usize,
        stop: Option<Vec<String>>,
        logprobs: bool,
        top_logprobs: usize,
        ignore_eos: bool,
    ) -> PyResult<Vec<Completion>> {
        let list = conversations
            .cast::<PyList>()
            .map_err(|_| PyValueError::new_err("conversations must be a list"))?;
        let convs: Vec<Vec<ChatMessage>> = if list.is_empty() {
            return Err(PyValueError::new_err("conversations is an empty list"));
        } else if list.get_item(0)?.cast::<PyDict>().is_ok() {
            vec![messages(conversations)?]
        } else {
            list.iter().map(|c| messages(&c)).collect::<PyResult<_>>()?
        };
        let p = sampling(
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop,
            logprobs,
            top_logprobs,
            ignore_eos,
        );
        self.run(py, convs.into_iter().map(Prompt::Chat).collect(), p, n)
    }

    /// Log-likelihood of each continuation after the prompt (the prompt's cache is shared).
    fn score(
        &self,
        py: Python<'_>,
        prompt: String,
        continuations: Vec<String>,
    ) -> PyResult<Vec<f64>> {
        let engine = self.engine.clone();
        py.detach(move || {
            with_engine!(engine, |e| {
                let (p, conts) = e.split_continuations(&prompt, &continuations)?;
                e.score_continuations(&p, &conts)
            })
        })
        .map(|v| v.into_iter().map(|s| s.total).collect())
        .map_err(to_py)
    }

    /// Every prompt token's logprob and the `top_k` most likely next tokens after each position.
    #[pyo3(signature = (prompt, top_k = 5))]
    fn prompt_logprobs(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        top_k: usize,
    ) -> PyResult<PromptLogprobs> {
        let p = self::prompts(prompt)?;
        if p.len() != 1 {
            return Err(PyValueError::new_err("prompt_logprobs takes one prompt"));
        }
        let p = p.into_iter().next().expect("one prompt");
        let engine = self.engine.clone();
        let lps = py
            .detach(move || with_engine!(engine, |e| e.prompt_logprobs(&p, top_k)))
            .map_err(to_py)?;
        let t = lps.len();
        let k = top_k.min(self.engine.config().vocab_size);
        let mut ids = Vec::with_capacity(t * k);
        let mut vals = Vec::with_capacity(t * k);
        for l in &lps {
            ids.extend(l.top_logprobs.iter().map(|x| x.token_id as i64));
            vals.extend(l.top_logprobs.iter().map(|x| x.logprob));
        }
        let prompt_ids: Vec<i64> = lps.iter().map(|l| l.token_id as i64).collect();
        let prompt_lp: Vec<f32> = lps.iter().map(|l| l.logprob.unwrap_or(f32::NAN)).collect();
        Ok(PromptLogprobs {
            prompt_ids: PyArray1::from_vec(py, prompt_ids).into_any().unbind(),
            prompt_logprobs: PyArray1::from_vec(py, prompt_lp).into_any().unbind(),
            token_ids: PyArray1::from_vec(py, ids)
                .reshape([t, k])?
                .into_any()
                .unbind(),
            logprobs: PyArray1::from_vec(py, vals)
                .reshape([t, k])?
                .into_any()
                .unbind(),
        })
    }

    /// Logits `[len(ids), vocab]` float32 of one forward pass (the engine's buffer moves into the
    /// array; no further copy).
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.engine.clone();
        let n = ids.len();
        let v = self.engine.config().vocab_size;
        let data = py
            .detach(move || -> moe::Result<Vec<f32>> {
                with_engine!(engine, |e| {
                    e.prompt_ids(&Prompt::Tokens(ids.clone()))?;
                    let mut kv = e.model.new_kv();
                    let mut out = e.model.forward(
                        &mut [moe::models::SeqStep {
                            tokens: &ids,
                            kv: &mut kv,
                            all_logits: true,
                        }],
                        &mut moe::trace::NoTrace,
                    )?;
                    Ok(out.pop().expect("one sequence"))
                })
            })
            .map_err(to_py)?;
        Ok(PyArray1::from_vec(py, data).reshape([n, v])?.into_any())
    }

    /// The load-balance statistics, as `moe stats --json` prints them.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = serde_json::to_string(&with_engine!(&self.engine, |e| e.stats()))
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (s,))
    }

    fn reset_stats(&self) {
        with_engine!(&self.engine, |e| e.reset_stats())
    }

    fn __repr__(&self) -> String {
        format!(
            "Model(name={:?}, context_length={})",
            self.engine.info().name,
            self.engine.info().context_length
        )
    }
}

#[pymodule]
fn _moe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Tokenizer>()?;
    m.add_class::<Completion>()?;
    m.add_class::<PromptLogprobs>()?;
    Ok(())
}
