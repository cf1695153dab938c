//! `moe`: generate, score, inspect expert load and benchmark Mixtral-style MoE models.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use moe::bench::{run_bench, BenchOptions};
use moe::bench_layer::{run_layer_bench, LayerBenchOptions};
use moe::engine::{Engine, LoadOptions, ModelSource};
use moe::generate::{GenerateRequest, Prompt};
use moe::sampling::SamplingParams;
use moe::tokenizer::ChatMessage;
use moe::Device;
use moe::{Backend, CpuBackend, CudaBackend};
use moe_kernels::WeightDType;
use serde_json::json;
use std::io::{IsTerminal, Write};

#[derive(Parser)]
#[command(
    name = "moe",
    version,
    about = "Sparse mixture-of-experts inference engine"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where to run: `cpu` (the default), `cuda` or `cuda:N`.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// On the CPU, round activations to bf16 in products with bf16 weights (pairwise bf16 dot
    /// products on CPUs with AVX-512 BF16: faster prefill, transformers' bf16 numerics). Default:
    /// f32 activations.
    #[arg(long, global = true)]
    bf16_activations: bool,
    /// Quantise a float checkpoint's expert matrices at load (in-situ): `q8_0`, `q4_0`, `q4_k`, `q5_k` or `q6_k` (K-quants where rows are whole 256-value blocks).
    #[arg(long, global = true)]
    quantize: Option<String>,
    /// With `--quantize`, the attention projections too.
    #[arg(long, global = true)]
    quantize_attention: bool,
    /// Read checkpoint files into memory instead of mapping them: the process survives the
    /// files being truncated or replaced on disk, at the cost of a full read at load and RAM
    /// for all the weights.
    #[arg(long, global = true)]
    no_mmap: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArg {
    /// Model directory, GGUF file or models.toml preset (default: the embedded student model).
    #[arg(long)]
    model: Option<String>,
}

#[derive(Args, Clone)]
struct PromptArg {
    /// Prompt text.
    #[arg(long, conflicts_with = "token_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    token_ids: Option<Vec<u32>>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation.
    Generate {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        prompt: PromptArg,
        /// Render the prompt as a user message with the chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        min_p: f32,
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        repetition_penalty: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Stop string (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Per generated token, the logprobs of this many alternatives.
        #[arg(long, default_value_t = 0)]
        top_logprobs: usize,
        #[arg(long)]
        json: bool,
    },
    /// Logprob of every prompt token and the top-k next tokens at each position.
    Logprobs {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        prompt: PromptArg,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long)]
        json: bool,
    },
    /// Run a prompt and print the load-balance statistics.
    Stats {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        prompt: PromptArg,
        /// Render the prompt as a user message with the chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long)]
        json: bool,
    },
    /// Serve models over an OpenAI-compatible HTTP API.
    Serve {
        /// Model directory or preset (repeatable; default: the embedded student).
        #[arg(long)]
        model: Vec<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port (printed on start).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Largest running batch per model.
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
        /// KV cache budget per model, bytes (suffixes K, M, G).
        #[arg(long, default_value = "1G")]
        kv_memory: String,
        /// max_tokens of a request that gives none.
        #[arg(long, default_value_t = 256)]
        default_max_tokens: usize,
        /// Sequences (prompts × n) one request may start.
        #[arg(long, default_value_t = moe::server::types::MAX_SEQUENCES_PER_REQUEST,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_sequences_per_request: usize,
        /// Largest `logprobs` / `top_logprobs` a request may ask for (default: the vocabulary
        /// size).
        #[arg(long)]
        max_logprobs: Option<usize>,
        /// A response with logprobs estimated above this size (positions × (logprobs + 1) × a
        /// per-entry size) is refused with a 400 before any work starts (suffixes K, M, G).
        #[arg(long, default_value = "256M")]
        max_response_bytes: String,
        /// Seconds a request head may take from its first byte.
        #[arg(long, default_value = "30", value_parser = parse_secs)]
        header_timeout: std::time::Duration,
        /// Seconds a request body may take after its head.
        #[arg(long, default_value = "60", value_parser = parse_secs)]
        body_timeout: std::time::Duration,
        /// Seconds a keep-alive connection may sit idle.
        #[arg(long, default_value = "60", value_parser = parse_secs)]
        idle_timeout: std::time::Duration,
        /// Open connections at most (default: 1024, or the open-file limit less 64).
        #[arg(long)]
        max_connections: Option<usize>,
        /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
        #[arg(long, default_value = "10", value_parser = parse_secs)]
        shutdown_timeout: std::time::Duration,
        /// Names the one served model answers to (as vLLM's flag): the first is its id in
        /// responses and /v1/models; its own names still address it.
        #[arg(long, num_args = 1..)]
        served_model_name: Vec<String>,
    },
    /// Collaborative loops: models teaching models.
    Loop {
        #[command(subcommand)]
        which: LoopCommand,
    },
    /// Measure load time, prefill and decode speed, peak memory and the bandwidth floor.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        what: Option<BenchCommand>,
        #[command(flatten)]
        model: ModelArg,
        /// Prompt lengths to prefill.
        #[arg(long, value_delimiter = ',', default_value = "128,512")]
        prefill: Vec<usize>,
        /// Tokens to decode per measurement.
        #[arg(long, default_value_t = 64)]
        decode: usize,
        /// Batch sizes for decode.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batch: Vec<usize>,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// One sparse MoE layer (router, top-k, experts, combine) on a CUDA device at a given shape,
    /// against its bandwidth and GEMM floors.
    MoeLayer {
        /// A named shape: small, mixtral (default), qwen3_30b_a3b or qwen3_bench; the flags below
        /// override its numbers.
        #[arg(long)]
        shape: Option<String>,
        /// Hidden size (mixtral: 4096).
        #[arg(long)]
        hidden: Option<usize>,
        /// Width of one expert, `moe_intermediate_size` (mixtral: 14336).
        #[arg(long, visible_alias = "expert-width")]
        ffn: Option<usize>,
        /// Routed experts (mixtral: 8).
        #[arg(long)]
        experts: Option<usize>,
        /// Experts per token (mixtral: 2).
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1,8,64,512,4096")]
        tokens: Vec<usize>,
        /// Weight dtype: bf16, f16 or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Timed calls per token count (the median is reported).
        #[arg(long, default_value_t = 40)]
        reps: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LoopCommand {
    /// Alpaca-style instruction data from a teacher (3 seed tasks shown, 20 asked per response).
    Alpaca {
        /// Seed tasks, JSONL as for self-instruct.
        #[arg(long, required_unless_present = "check_tasks")]
        seed_tasks: Option<std::path::PathBuf>,
        /// Instead of a run: how much of an Alpaca-style generation on these tasks with checkable
        /// answers (`{"task", "question", "answer"}` JSONL, e.g. eval.jsonl) is correct and how
        /// much survives the filters (`check_summary.json`, `check_items.jsonl` in --out).
        #[arg(long)]
        check_tasks: Option<std::path::PathBuf>,
        /// Alpaca prompts of the check's first part.
        #[arg(long, default_value_t = 20)]
        check_requests: usize,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Teacher: directory or preset (default: the `teacher` role in models.toml).
        #[arg(long)]
        model: Option<String>,
        /// Or an OpenAI-compatible endpoint (`http://host:port/v1`) with --model-name.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "teacher")]
        model_name: String,
        #[arg(long, default_value_t = 100)]
        num_items: usize,
        #[arg(long, default_value_t = 5)]
        batch_size: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 3072)]
        max_tokens: usize,
        #[command(flatten)]
        dedup: DedupArgs,
        /// Continue an interrupted run in --out.
        #[arg(long)]
        resume: bool,
    },
    /// Bootstrap instructions and instances from seed tasks (self-instruct), ending in an
    /// Alpaca-format dataset.
    SelfInstruct {
        /// Seed tasks, JSONL `{"instruction", "instances": [{"input", "output"}], "is_classification"}`.
        #[arg(long)]
        seed_tasks: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Generating model: directory or preset (default: the `teacher` role in models.toml).
        #[arg(long)]
        model: Option<String>,
        /// Or an OpenAI-compatible endpoint (`http://host:port/v1`) with --model-name.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "teacher")]
        model_name: String,
        #[arg(long, default_value_t = 100)]
        num_instructions: usize,
        #[arg(long, default_value_t = 5)]
        batch_size: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1024)]
        max_tokens: usize,
        #[command(flatten)]
        dedup: DedupArgs,
        /// Continue an interrupted run in --out.
        #[arg(long)]
        resume: bool,
    },
    /// Teacher top-k logprobs over a dataset (logit distillation data); with --eval, the
    /// teacher/student divergences over full vocabularies.
    Distill {
        /// JSONL: `{"text"}`, `{"messages"}` or `{"question", "answer"[, "task"]}` per line.
        #[arg(long)]
        data: std::path::PathBuf,
        /// Run directory (manifest, shards, divergences).
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        teacher: TeacherArgs,
        /// Alternatives per position (up to the vocabulary).
        #[arg(long, default_value_t = 20)]
        top_k: usize,
        /// Also compare a student with the teacher.
        #[arg(long)]
        eval: bool,
        /// Student: directory or preset (default: the `student` role, else the embedded model).
        #[arg(long)]
        student: Option<String>,
        /// β of the generalised Jensen–Shannon divergence.
        #[arg(long, default_value_t = 0.5)]
        beta: f64,
        /// Use only the first N records.
        #[arg(long)]
        limit: Option<usize>,
        /// Shard files: parquet (DistillKit's uncompressed rows), jsonl (with the actual tokens'
        /// logprobs and ranks too), or both.
        #[arg(long, default_value = "parquet")]
        format: String,
        /// Rows per shard.
        #[arg(long, default_value_t = 256)]
        shard_rows: usize,
        /// Continue an interrupted run in --out after its last complete shard.
        #[arg(long)]
        resume: bool,
    },
    /// Active learning: the student picks the pool items it is least sure of, the teacher
    /// labels them, and the labels join the student's in-context examples.
    Active {
        #[command(flatten)]
        models: LoopModels,
        #[command(flatten)]
        source: TaskSource,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Unlabelled pool size (generated tasks; a --tasks file is split into pool and held-out).
        #[arg(long, default_value_t = 120)]
        pool_size: usize,
        /// Held-out items.
        #[arg(long, default_value_t = 80)]
        heldout_size: usize,
        /// Held-out tasks from a file instead (e.g. eval.jsonl).
        #[arg(long)]
        heldout: Option<std::path::PathBuf>,
        /// Comma-separated: random, least_confidence, margin, entropy, nll, committee, gate.
        #[arg(
            long,
            default_value = "random,least_confidence,margin,entropy,nll,committee,gate"
        )]
        strategies: String,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Labels asked per round.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Most in-context examples per question (same topic).
        #[arg(long, default_value_t = 4)]
        shots: usize,
        /// Sampling committee members besides the greedy student.
        #[arg(long, default_value_t = 3)]
        committee: usize,
        /// Extra committee models (directories or presets, repeatable).
        #[arg(long)]
        committee_model: Vec<String>,
        #[arg(long, default_value_t = 24)]
        max_tokens: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the strategies an interrupted run in --out finished; run the rest.
        #[arg(long)]
        resume: bool,
    },
    /// Learning by teaching (LbT M1): teacher rationales scored by how well the student does on
    /// an exam with each as its in-context example; answers by MAJ, MAX and SUM.
    Teach {
        #[command(flatten)]
        models: LoopModels,
        #[command(flatten)]
        source: TaskSource,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Pool of problems (teaching and exam problems come from it).
        #[arg(long, default_value_t = 200)]
        pool_size: usize,
        #[arg(long, default_value_t = 8)]
        teach_problems: usize,
        /// Rationale+answer pairs per teaching problem.
        #[arg(long, default_value_t = 4)]
        rationales: usize,
        /// Exam problems per teaching problem (same topic).
        #[arg(long, default_value_t = 3)]
        exam_problems: usize,
        /// Student samples per exam problem.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        #[arg(long, default_value_t = 20)]
        top_k: usize,
        /// Student's sampling temperature on the exam (0: greedy).
        #[arg(long, default_value_t = 0.7)]
        exam_temperature: f32,
        /// `plain` (the bare question) or `cot` (asks for steps and `Answer: …`).
        #[arg(long, default_value = "plain")]
        style: String,
        /// Text that opens the student's answer on the exam (the assistant turn prefilled).
        #[arg(long)]
        prefill: Option<String>,
        /// Prefill every exam prompt whole (to measure what prefix caching saves).
        #[arg(long)]
        no_prefix_cache: bool,
        /// Adaptive teaching rounds on a held-out exam (0: none).
        #[arg(long, default_value_t = 0)]
        rounds: usize,
        /// Held-out exam of the adaptive rounds (default: generated).
        #[arg(long)]
        heldout: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 80)]
        heldout_size: usize,
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Continue an interrupted run in --out.
        #[arg(long)]
        resume: bool,
    },
    /// Social learning: teachers share synthetic examples or instructions, never their private
    /// data; student accuracy per mode and the canary's exposure.
    Social {
        #[command(flatten)]
        models: LoopModels,
        #[command(flatten)]
        source: TaskSource,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 4)]
        teachers: usize,
        /// Private examples per teacher.
        #[arg(long, default_value_t = 8)]
        private: usize,
        /// Examples in the student's prompt.
        #[arg(long, default_value_t = 4)]
        shared: usize,
        /// Private examples in a teacher's generation prompt.
        #[arg(long, default_value_t = 4)]
        n_gen: usize,
        /// Candidates sampled per teacher.
        #[arg(long, default_value_t = 8)]
        samples: usize,
        /// Candidates kept per teacher (lowest perplexity).
        #[arg(long, default_value_t = 4)]
        keep: usize,
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        #[arg(long, default_value_t = 60)]
        test_size: usize,
        /// Test tasks from a file instead (e.g. eval.jsonl).
        #[arg(long)]
        test: Option<std::path::PathBuf>,
        /// A canary's secret and its alternatives.
        #[arg(long, default_value_t = 1000)]
        canary_candidates: usize,
        /// Canaries in every teacher's private data (exposure is averaged over them).
        #[arg(long, default_value_t = 3)]
        canaries: usize,
        #[arg(long, default_value_t = 48)]
        max_tokens: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Continue an interrupted run in --out (the steps in its state.jsonl are kept).
        #[arg(long)]
        resume: bool,
    },
}

/// The near-duplicate filter of the generating loops.
#[derive(Args, Clone)]
struct DedupArgs {
    /// `rouge` (ROUGE-L against every kept instruction, as the anchors) or `minhash` (Jaccard of
    /// word shingles through LSH: sub-linear in the pool, for very large runs).
    #[arg(long, default_value = "rouge")]
    dedup: String,
    /// A candidate scoring above this against any kept instruction is dropped.
    #[arg(long, default_value_t = 0.7)]
    dedup_threshold: f64,
    /// Words per MinHash shingle.
    #[arg(long, default_value_t = 1)]
    shingle: usize,
}

impl DedupArgs {
    fn parse(&self) -> moe::Result<moe::loops::dedup::Dedup> {
        moe::loops::dedup::Dedup::parse(&self.dedup, self.dedup_threshold, self.shingle)
    }
}

/// A loop's teacher: a local model, or an OpenAI-compatible endpoint.
#[derive(Args, Clone)]
struct TeacherArgs {
    /// Teacher: directory or preset (default: the `teacher` role in models.toml).
    #[arg(long)]
    teacher: Option<String>,
    /// Teacher behind an OpenAI-compatible endpoint instead (`http://host:port/v1`).
    #[arg(long)]
    teacher_url: Option<String>,
    /// Model name at --teacher-url.
    #[arg(long, default_value = "teacher")]
    teacher_model: String,
}

/// A loop's teacher client, the student's local model and, for a remote student, its client.
type OpenedModels<B> = (
    Box<dyn moe::loops::client::ModelClient>,
    std::sync::Arc<Engine<B>>,
    Option<moe::loops::client::HttpClient>,
);

/// Loads a loop's local model onto the run's one device (`--device`).
type Loader<'a, B> = &'a dyn Fn(&ModelArg) -> Result<Engine<B>>;

/// Teacher and student of a loop.
#[derive(Args, Clone)]
struct LoopModels {
    #[command(flatten)]
    teacher: TeacherArgs,
    /// Student, in process: directory or preset (default: the `student` role, else the
    /// embedded model). With --student-url, the local copy whose tokenizer and chat template
    /// build the student's prompts.
    #[arg(long)]
    student: Option<String>,
    /// Student behind an OpenAI-compatible endpoint instead (`http://host:port/v1`); it must
    /// return token ids (`return_tokens_as_token_ids`) and echoed prompt logprobs, as `moe
    /// serve` does. Not with the `gate` strategy (router logits are not served).
    #[arg(long)]
    student_url: Option<String>,
    /// Model name at --student-url.
    #[arg(long, default_value = "student")]
    student_model: String,
    /// How in-context examples reach the student: `turns` (earlier chat turns) or `inline`
    /// (lines inside the one user turn).
    #[arg(long, default_value = "turns")]
    context: String,
}

/// Where a loop's tasks come from.
#[derive(Args, Clone)]
struct TaskSource {
    /// Tasks JSONL (`question`, `answer`, optional `topic`/`task`, `labels`).
    #[arg(long)]
    tasks: Option<std::path::PathBuf>,
    /// Or built-in generator families, comma-separated (`models` = the eight trained ones).
    #[arg(long, default_value = "models")]
    families: String,
    /// Keep only these topics (comma-separated).
    #[arg(long)]
    topics: Option<String>,
}

impl TaskSource {
    /// `n` tasks from the file (all of it when `n` is 0) or the generators.
    fn load(&self, n: usize, seed: u64) -> Result<Vec<moe::loops::tasks::Task>> {
        let mut t = match &self.tasks {
            Some(p) => moe::loops::tasks::read_tasks(p)?,
            None => moe::loops::tasks::generate(&self.families, n, seed)?,
        };
        self.filter(&mut t);
        if n > 0 {
            t.truncate(n);
        }
        Ok(t)
    }
    fn filter(&self, t: &mut Vec<moe::loops::tasks::Task>) {
        if let Some(keep) = &self.topics {
            let keep: Vec<&str> = keep.split(',').map(str::trim).collect();
            t.retain(|x| keep.contains(&x.topic()));
        }
    }
    fn file(&self, path: &std::path::Path) -> Result<Vec<moe::loops::tasks::Task>> {
        let mut t = moe::loops::tasks::read_tasks(path)?;
        self.filter(&mut t);
        Ok(t)
    }
}

impl LoopModels {
    /// The teacher's client, the student's local model (in process, or the tokenizer's source
    /// for a remote student) and the remote student's client. Local models load with `load`.
    fn open<B: Backend>(&self, load: Loader<'_, B>) -> Result<OpenedModels<B>> {
        let teacher = teacher_client(
            self.teacher.teacher_url.as_deref(),
            &self.teacher.teacher_model,
            self.teacher.teacher.clone(),
            load,
        )?;
        let student = std::sync::Arc::new(load(&ModelArg {
            model: role_or(self.student.clone(), "student"),
        })?);
        let remote = self
            .student_url
            .as_deref()
            .map(|u| moe::loops::client::HttpClient::new(u, &self.student_model))
            .transpose()?;
        Ok((teacher, student, remote))
    }
}

fn role_or(arg: Option<String>, role: &str) -> Option<String> {
    arg.or_else(|| {
        moe::presets::Presets::discover()
            .ok()
            .and_then(|p| p.by_role(role).map(|(n, _)| n.to_string()))
    })
}

/// The generating model of a loop: an endpoint when `url` is given, else a local model (the
/// `teacher` role by default) loaded with `load`.
fn teacher_client<B: Backend>(
    url: Option<&str>,
    model_name: &str,
    model: Option<String>,
    load: Loader<'_, B>,
) -> Result<Box<dyn moe::loops::client::ModelClient>> {
    use moe::loops::client::{HttpClient, LocalClient};
    Ok(match url {
        Some(u) => Box::new(HttpClient::new(u, model_name)?),
        None => Box::new(LocalClient {
            engine: std::sync::Arc::new(load(&ModelArg {
                model: role_or(model, "teacher"),
            })?),
        }),
    })
}

/// Runs a loop; every local model (teacher, student, committee) is loaded with `load`, so all
/// of them sit on the one device it loads onto. Remote models are only clients.
fn run_loop<B: Backend>(
    which: LoopCommand,
    out: &mut dyn Write,
    load: Loader<'_, B>,
) -> Result<()> {
    use moe::loops::client::{HttpClient, LocalClient, ModelClient};
    use moe::loops::distill;
    match which {
        LoopCommand::Alpaca {
            seed_tasks,
            out: dir,
            model,
            url,
            model_name,
            num_items,
            batch_size,
            seed,
            max_tokens,
            dedup,
            resume,
            check_tasks,
            check_requests,
        } => {
            if batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let dedup = dedup.parse()?;
            let client = teacher_client(url.as_deref(), &model_name, model, load)?;
            let ctx = client.capabilities().context_length.unwrap_or(4096);
            if let Some(path) = check_tasks {
                let tasks = moe::loops::tasks::read_tasks(&path)?;
                let cfg = moe::loops::alpaca::CheckConfig {
                    out: dir,
                    requests: check_requests,
                    batch_size,
                    seed,
                    max_tokens: max_tokens.min(ctx / 2),
                    dedup,
                };
                let summary = moe::loops::alpaca::check_on_tasks(client.as_ref(), &tasks, &cfg)?;
                writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
                return Ok(());
            }
            let Some(seed_tasks) = seed_tasks else {
                bail!("--seed-tasks is required");
            };
            let cfg = moe::loops::alpaca::AlpacaConfig {
                seed_tasks,
                out: dir,
                num_items,
                batch_size,
                seed,
                max_tokens: max_tokens.min(ctx / 2),
                dedup,
                resume,
                stop_after_batches: None,
            };
            let summary = moe::loops::alpaca::run(client.as_ref(), &cfg)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        }
        LoopCommand::SelfInstruct {
            seed_tasks,
            out: dir,
            model,
            url,
            model_name,
            num_instructions,
            batch_size,
            seed,
            max_tokens,
            dedup,
            resume,
        } => {
            if batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let dedup = dedup.parse()?;
            let client = teacher_client(url.as_deref(), &model_name, model, load)?;
            let ctx = client.capabilities().context_length.unwrap_or(2048);
            let cfg = moe::loops::self_instruct::SelfInstructConfig {
                seed_tasks,
                out: dir,
                num_instructions,
                batch_size,
                seed,
                // The prompt takes part of the context; cap generation to what remains.
                max_tokens: max_tokens.min(ctx / 2),
                resume,
                stop_after_batches: None,
                dedup,
            };
            let summary = moe::loops::self_instruct::run(client.as_ref(), &cfg)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        }
        LoopCommand::Distill {
            data,
            out: dir,
            teacher:
                TeacherArgs {
                    teacher,
                    teacher_url,
                    teacher_model,
                },
            top_k,
            eval,
            student,
            beta,
            limit,
            format,
            shard_rows,
            resume,
        } => {
            let started = std::time::SystemTime::now();
            let format = distill::ShardFormat::parse(&format)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut records = distill::read_jsonl(&data)?;
            if let Some(n) = limit {
                records.truncate(n);
            }
            let teacher_name = role_or(teacher, "teacher");
            let teacher_engine = std::sync::Arc::new(load(&ModelArg {
                model: teacher_name.clone(),
            })?);
            let client: Box<dyn ModelClient> = match &teacher_url {
                Some(url) => Box::new(HttpClient::new(url, &teacher_model)?),
                None => Box::new(LocalClient {
                    engine: teacher_engine.clone(),
                }),
            };
            // Records are tokenised with the teacher's tokenizer (the student's must match).
            let seqs: Vec<distill::Tokenised> = records
                .iter()
                .map(|r| distill::tokenise(&teacher_engine, r))
                .collect::<moe::Result<_>>()?;
            let cfg = distill::DistillConfig {
                out: dir.clone(),
                top_k,
                format,
                shard_rows,
                resume,
                stop_after_shards: None,
            };
            let step = distill::run(client.as_ref(), &seqs, &cfg)?;
            let mut manifest = json!({
                "loop": "distill", "data": data, "records": seqs.len(), "top_k": top_k,
                "teacher": client.name(), "teacher_source": teacher_engine.info.source,
                "started_unix": started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "version": env!("CARGO_PKG_VERSION"),
                "distill": step.clone(),
            });
            writeln!(
                out,
                "distill: {} sequences, {} tokens, {:.1} prompts/s, {:.0} tokens/s this run -> {} shard files in {}",
                seqs.len(),
                step["tokens"],
                step["prompts_per_s"].as_f64().unwrap_or(0.0),
                step["tokens_per_s"].as_f64().unwrap_or(0.0),
                step["shards"].as_array().map_or(0, |a| a.len()),
                dir.display()
            )?;
            if eval {
                let student_name = role_or(student, "student");
                let student = load(&ModelArg {
                    model: student_name,
                })?;
                let t1 = std::time::Instant::now();
                let per = distill::evaluate(&teacher_engine, &student, &seqs, beta)?;
                let eval_s = t1.elapsed().as_secs_f64();
                let eval_tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
                let mut w =
                    std::io::BufWriter::new(std::fs::File::create(dir.join("divergence.jsonl"))?);
                for p in &per {
                    writeln!(w, "{}", serde_json::to_string(p)?)?;
                }
                w.flush()?;
                let (all, tasks) = distill::summarise(&per);
                let summary = json!({"beta": beta, "student": student.info.name, "overall": all,
                    "per_task": tasks.iter().map(|(t, n, d)| json!({"task": t, "positions": n, "divergence": d})).collect::<Vec<_>>(),
                    "seconds": eval_s, "sequences_per_s": per.len() as f64 / eval_s,
                    "tokens": eval_tokens, "tokens_per_s": eval_tokens as f64 / eval_s});
                std::fs::write(
                    dir.join("divergence-summary.json"),
                    serde_json::to_string_pretty(&summary)?,
                )?;
                manifest["eval"] = summary.clone();
                writeln!(
                    out,
                    "{:<10} {:>9} {:>10} {:>10} {:>10} {:>8} {:>8}",
                    "task", "positions", "fwd KL", "rev KL", "JSD", "TVD", "top-1"
                )?;
                for (t, n, d) in tasks
                    .iter()
                    .chain(std::iter::once(&("all".to_string(), 0, all)))
                {
                    writeln!(
                        out,
                        "{:<10} {:>9} {:>10.4} {:>10.4} {:>10.4} {:>8.4} {:>8.3}",
                        t, n, d.forward_kl, d.reverse_kl, d.jsd, d.tvd, d.top1_agree
                    )?;
                }
            }
            manifest["finished_unix"] = json!(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()));
            std::fs::write(
                dir.join("manifest.json"),
                serde_json::to_string_pretty(&manifest)?,
            )?;
        }
        LoopCommand::Active {
            models,
            source,
            out: dir,
            pool_size,
            heldout_size,
            heldout,
            strategies,
            rounds,
            batch,
            shots,
            committee,
            committee_model,
            max_tokens,
            seed,
            resume,
        } => {
            let (pool, heldout) = match (&source.tasks, &heldout) {
                (_, Some(h)) => (source.load(pool_size, seed)?, source.file(h)?),
                (Some(_), None) => {
                    let mut all = source.load(0, seed)?;
                    moe::loops::self_instruct::LoopRng(seed).shuffle(&mut all);
                    let h = all.split_off(pool_size.min(all.len()));
                    (all, h.into_iter().take(heldout_size).collect())
                }
                (None, None) => (
                    source.load(pool_size, seed)?,
                    source.load(heldout_size, seed ^ 0x4E1D)?,
                ),
            };
            let (teacher, student, remote) = models.open(load)?;
            let student = match &remote {
                Some(c) => moe::loops::learner::Student::remote(&student, c),
                None => moe::loops::learner::Student::local(&student),
            };
            let committee_engines: Vec<Engine<B>> = committee_model
                .into_iter()
                .map(|m| load(&ModelArg { model: Some(m) }))
                .collect::<Result<_>>()?;
            let cfg = moe::loops::active::ActiveConfig {
                out: dir,
                pool,
                heldout,
                strategies: strategies
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                rounds,
                batch,
                shots,
                committee,
                max_tokens,
                seed,
                resume,
                stop_after_strategies: None,
                context: moe::loops::learner::ContextFormat::parse(&models.context)?,
            };
            let refs: Vec<&Engine<B>> = committee_engines.iter().collect();
            let summary = moe::loops::active::run(teacher.as_ref(), &student, &refs, &cfg)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        }
        LoopCommand::Teach {
            models,
            source,
            out: dir,
            pool_size,
            teach_problems,
            rationales,
            exam_problems,
            repeats,
            temperature,
            top_k,
            exam_temperature,
            style,
            prefill,
            no_prefix_cache,
            rounds,
            heldout,
            heldout_size,
            max_tokens,
            seed,
            resume,
        } => {
            let (pool, heldout) = match (&source.tasks, &heldout, rounds) {
                (_, _, 0) => (source.load(pool_size, seed)?, vec![]),
                (_, Some(h), _) => (source.load(pool_size, seed)?, source.file(h)?),
                (Some(_), None, _) => {
                    // One file: the held-out exam is split off the pool.
                    let mut all = source.load(0, seed)?;
                    moe::loops::self_instruct::LoopRng(seed).shuffle(&mut all);
                    let h = all.split_off(all.len().saturating_sub(heldout_size));
                    all.truncate(pool_size);
                    (all, h)
                }
                (None, None, _) => (
                    source.load(pool_size, seed)?,
                    source.load(heldout_size, seed ^ 0x4E1D)?,
                ),
            };
            let (teacher, student, remote) = models.open(load)?;
            let student = match &remote {
                Some(c) => moe::loops::learner::Student::remote(&student, c),
                None => moe::loops::learner::Student::local(&student),
            };
            let cfg = moe::loops::teach::TeachConfig {
                out: dir,
                pool,
                heldout,
                teach_problems,
                rationales,
                exam_problems,
                repeats,
                teacher_temperature: temperature,
                teacher_top_k: top_k,
                exam_temperature,
                max_tokens,
                style: moe::loops::teach::Style::parse(&style)?,
                share_prefix: !no_prefix_cache,
                rounds,
                seed,
                resume,
                context: moe::loops::learner::ContextFormat::parse(&models.context)?,
                prefill,
            };
            let summary = moe::loops::teach::run(teacher.as_ref(), &student, &cfg)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        }
        LoopCommand::Social {
            models,
            source,
            out: dir,
            teachers,
            private,
            shared,
            n_gen,
            samples,
            keep,
            temperature,
            test_size,
            test,
            canary_candidates,
            canaries,
            max_tokens,
            seed,
            resume,
        } => {
            let need = teachers * private + canaries.max(1);
            let n_fresh = teachers * shared.max(1);
            let (data, fresh, test) = if source.tasks.is_some() {
                // One file: public questions and (without --test) the test set are split off,
                // so none of them is private.
                let mut all = source.load(0, seed)?;
                moe::loops::self_instruct::LoopRng(seed ^ 0xF2E5).shuffle(&mut all);
                let mut rest = all.split_off(n_fresh.min(all.len()));
                let test = match &test {
                    Some(p) => source.file(p)?,
                    None => {
                        let data = rest.split_off(test_size.min(rest.len()));
                        std::mem::replace(&mut rest, data)
                    }
                };
                (rest, all, test)
            } else {
                (
                    source.load(need, seed)?,
                    source.load(n_fresh, seed ^ 0xF2E5)?,
                    match &test {
                        Some(p) => source.file(p)?,
                        None => source.load(test_size, seed ^ 0x4E1D)?,
                    },
                )
            };
            let (teacher, student, remote) = models.open(load)?;
            let student = match &remote {
                Some(c) => moe::loops::learner::Student::remote(&student, c),
                None => moe::loops::learner::Student::local(&student),
            };
            let cfg = moe::loops::social::SocialConfig {
                out: dir,
                data,
                fresh,
                test,
                teachers,
                private_per_teacher: private,
                shared,
                n_gen,
                samples,
                keep,
                temperature,
                canary_candidates,
                canaries,
                max_tokens,
                seed,
                context: moe::loops::learner::ContextFormat::parse(&models.context)?,
                resume,
                stop_after_steps: None,
            };
            let summary = moe::loops::social::run(teacher.as_ref(), &student, &cfg)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        }
    }
    Ok(())
}

fn load(model: &ModelArg) -> Result<Engine<CpuBackend>> {
    load_on(model, CpuBackend)
}

/// Opens CUDA device `ordinal` (or says why not) and loads the model onto it.
fn load_cuda(model: &ModelArg, ordinal: usize) -> Result<Engine<CudaBackend>> {
    let backend = CudaBackend::new(ordinal).with_context(|| format!("--device cuda:{ordinal}"))?;
    load_on(model, backend)
}

fn load_on<B: Backend>(model: &ModelArg, backend: B) -> Result<Engine<B>> {
    let source = ModelSource::parse(model.model.as_deref());
    let show = std::io::stderr().is_terminal();
    let mut last = 0usize;
    let mut progress = |done: usize, total: usize| {
        let pct = done * 100 / total.max(1);
        if show && total > 64 && pct != last {
            last = pct;
            let bar = "#".repeat(pct / 4);
            eprint!("\rchecking weights [{bar:<25}] {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let opts = LoadOptions {
        progress: Some(&mut progress),
        bf16_activations: BF16_ACTIVATIONS.load(std::sync::atomic::Ordering::Relaxed),
        quantize: QUANTIZE.get().copied().flatten(),
        quantize_attention: QUANTIZE_ATTENTION.load(std::sync::atomic::Ordering::Relaxed),
        no_mmap: NO_MMAP.load(std::sync::atomic::Ordering::Relaxed),
    };
    Engine::load_with(&source, backend, opts).with_context(|| format!("loading model {source}"))
}

/// Seconds, above zero (fractions allowed), as a duration.
fn parse_secs(s: &str) -> std::result::Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() && x < 1e9 => Ok(std::time::Duration::from_secs_f64(x)),
        _ => Err(format!("`{s}` is not a number of seconds above zero")),
    }
}

/// Loads every model with `load` and starts the server on them.
fn serve_on<B: Backend>(
    names: &[Option<String>],
    load: impl Fn(&ModelArg) -> Result<Engine<B>>,
    config: moe::server::ServerConfig,
) -> Result<moe::server::ServerHandle> {
    let mut engines = vec![];
    for m in names {
        let engine = load(&ModelArg { model: m.clone() })?;
        let name = engine.info.name.clone();
        if engines
            .iter()
            .any(|(n, _): &(String, Engine<B>)| *n == name)
        {
            bail!("two models are named `{name}`");
        }
        engines.push((name, engine));
    }
    moe::server::start(engines, config).context("starting the server")
}

/// Runs `$body` with `$engine` bound to the model loaded on `$device` (the body is compiled once
/// per backend; the choice is made here, once).
macro_rules! on_device {
    ($device:expr, $model:expr, |$engine:ident| $body:block) => {
        match $device {
            Device::Cpu => {
                let $engine = load(&$model)?;
                $body
            }
            Device::Cuda(n) => {
                let $engine = load_cuda(&$model, n)?;
                $body
            }
        }
    };
}

fn prompt_of(p: &PromptArg, chat: bool) -> Result<Prompt> {
    // Else an empty text becomes a prompt of just the BOS token, and exits 0 with nothing said.
    if p.prompt.as_deref() == Some("") {
        bail!("empty prompt: --prompt \"\" has no text to continue");
    }
    Ok(match (&p.prompt, &p.token_ids) {
        (Some(text), None) if chat => Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: text.clone(),
        }]),
        (Some(text), None) => Prompt::Text(text.clone()),
        (None, Some(ids)) if !chat => Prompt::Tokens(ids.clone()),
        (None, Some(_)) => bail!("--chat needs --prompt text, not --token-ids"),
        _ => bail!("give --prompt TEXT or --token-ids 1,2,3"),
    })
}

/// `1073741824`, `512M`, `1G`, `64K`.
fn parse_bytes(flag: &str, s: &str) -> Result<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{flag} {s:?} is not a size"))?;
    let bytes = n * mult as f64;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        bail!("{flag} {s:?} must be a finite size of at least one byte");
    }
    Ok(bytes as usize)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `--bf16-activations`, for every model this process loads (like `--threads` for its pool).
static BF16_ACTIVATIONS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--quantize` and `--quantize-attention`, likewise.
static QUANTIZE: std::sync::OnceLock<Option<moe_kernels::quant::GgmlType>> =
    std::sync::OnceLock::new();
static QUANTIZE_ATTENTION: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
/// `--no-mmap`, likewise.
static NO_MMAP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn run(cli: Cli) -> Result<()> {
    BF16_ACTIVATIONS.store(cli.bf16_activations, std::sync::atomic::Ordering::Relaxed);
    let quantize = match cli.quantize.as_deref() {
        None => None,
        Some(q) => Some(
            moe_kernels::quant::QUANTIZE_TYPES
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(q))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--quantize {q}: not a supported type (supported: {})",
                        moe_kernels::quant::QUANTIZE_TYPES
                            .map(|t| t.name().to_ascii_lowercase())
                            .join(", ")
                    )
                })?,
        ),
    };
    let _ = QUANTIZE.set(quantize);
    QUANTIZE_ATTENTION.store(cli.quantize_attention, std::sync::atomic::Ordering::Relaxed);
    NO_MMAP.store(cli.no_mmap, std::sync::atomic::Ordering::Relaxed);
    if cli.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    // Every command but `serve` runs its forward passes on this thread. As the pool's first
    // worker it leads each pass's team itself; from outside the pool it would hand each pass to
    // a worker and sleep until woken with the result (≈ 70 µs of a decode step here).
    let passes_here = !matches!(cli.command, Command::Serve { .. });
    if cli.threads.is_some() || passes_here {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(cli.threads.unwrap_or(0));
        if passes_here {
            pool.use_current_thread()
        } else {
            pool
        }
        .build_global()?;
    }
    let device = Device::parse(&cli.device)?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Generate {
            model,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            seed,
            stop,
            top_logprobs,
            json,
        } => {
            let prompt = prompt_of(&prompt, chat)?;
            let params = SamplingParams {
                temperature,
                top_p,
                top_k,
                min_p,
                repetition_penalty,
                seed,
                stop,
                max_tokens,
                logprobs: top_logprobs > 0,
                top_logprobs,
                ..SamplingParams::default()
            };
            params.validate(usize::MAX)?;
            on_device!(device, model, |engine| {
                let req = GenerateRequest::new(prompt, params);
                if json {
                    let c = engine.generate(&[req])?.pop().expect("one completion");
                    let mut v = json!({
                        "model": engine.info.name,
                        "prompt_ids": c.prompt_ids,
                        "token_ids": c.token_ids,
                        "text": c.text,
                        "finish_reason": c.finish_reason.as_str(),
                        "stop": c.stop,
                    });
                    if let Some(lp) = c.logprobs {
                        v["logprobs"] = serde_json::to_value(lp)?;
                    }
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                } else {
                    let c = engine.generate_stream(&[req], &mut |ev| {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(ev.text.as_bytes());
                        let _ = o.flush();
                    })?;
                    writeln!(out)?;
                    if c[0].finish_reason == moe::generate::FinishReason::Length {
                        eprintln!("[stopped at max tokens]");
                    }
                }
            });
        }
        Command::Logprobs {
            model,
            prompt,
            top_k,
            json,
        } => {
            let prompt = prompt_of(&prompt, false)?;
            on_device!(device, model, |engine| {
                let lps = engine.prompt_logprobs(&prompt, top_k)?;
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&json!({ "tokens": lps }))?
                    )?;
                } else {
                    for t in &lps {
                        let piece = engine
                            .tokenizer
                            .token_text(t.token_id)
                            .escape_debug()
                            .to_string();
                        let lp = t
                            .logprob
                            .map_or("      -".to_string(), |l| format!("{l:>9.4}"));
                        let next: Vec<String> = t
                            .top_logprobs
                            .iter()
                            .map(|x| {
                                format!(
                                    "{}:{:.3}",
                                    engine.tokenizer.token_text(x.token_id).escape_debug(),
                                    x.logprob
                                )
                            })
                            .collect();
                        writeln!(
                            out,
                            "{:>4} {:>6} {:<14} {lp}   next: {}",
                            t.position,
                            t.token_id,
                            piece,
                            next.join(" ")
                        )?;
                    }
                }
            });
        }
        Command::Stats {
            model,
            prompt,
            chat,
            json,
        } => {
            let prompt = prompt_of(&prompt, chat)?;
            on_device!(device, model, |engine| {
                engine.prompt_logprobs(&prompt, 0)?;
                let report = engine.stats();
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                } else {
                    write!(out, "{}", report.table())?;
                }
            });
        }
        Command::Serve {
            model,
            host,
            port,
            max_batch,
            kv_memory,
            default_max_tokens,
            max_sequences_per_request,
            max_logprobs,
            max_response_bytes,
            header_timeout,
            body_timeout,
            idle_timeout,
            max_connections,
            shutdown_timeout,
            served_model_name,
        } => {
            let kv_memory = parse_bytes("--kv-memory", &kv_memory)?;
            let max_response_bytes = parse_bytes("--max-response-bytes", &max_response_bytes)?;
            let names: Vec<Option<String>> = if model.is_empty() {
                vec![None]
            } else {
                model.into_iter().map(Some).collect()
            };
            let config = moe::server::ServerConfig {
                host,
                port,
                max_batch,
                kv_memory,
                default_max_tokens,
                max_sequences_per_request,
                max_logprobs,
                max_response_bytes,
                header_timeout,
                body_timeout,
                idle_timeout,
                max_connections,
                shutdown_timeout,
                handle_signals: true,
                served_model_names: served_model_name,
                ..Default::default()
            };
            let handle = match device {
                Device::Cpu => serve_on(&names, load, config)?,
                Device::Cuda(n) => serve_on(&names, |m| load_cuda(m, n), config)?,
            };
            let names: Vec<String> = handle.models.clone();
            writeln!(
                out,
                "listening on {} (models: {})",
                handle.url(),
                names.join(", ")
            )?;
            out.flush()?;
            drop(out);
            handle.wait();
            eprintln!("shut down");
            return Ok(());
        }
        Command::Loop { which } => match device {
            Device::Cpu => run_loop(which, &mut out, &load)?,
            Device::Cuda(n) => run_loop(which, &mut out, &|m: &ModelArg| load_cuda(m, n))?,
        },
        Command::Bench {
            what:
                Some(BenchCommand::MoeLayer {
                    shape,
                    hidden,
                    ffn,
                    experts,
                    top_k,
                    tokens,
                    dtype,
                    reps,
                    json,
                }),
            ..
        } => {
            let (shape, [hidden, ffn, experts, top_k]) =
                moe::bench_layer::resolve_shape(shape.as_deref(), hidden, ffn, experts, top_k)?;
            let Device::Cuda(ordinal) = device else {
                bail!("moe bench moe-layer runs on a CUDA device: pass --device cuda[:N]");
            };
            let dtype = match dtype.as_str() {
                "bf16" => WeightDType::BF16,
                "f16" => WeightDType::F16,
                "f32" => WeightDType::F32,
                other => bail!("unknown --dtype `{other}` (bf16, f16 or f32)"),
            };
            let opts = LayerBenchOptions {
                ordinal,
                shape,
                hidden,
                ffn,
                experts,
                top_k,
                tokens,
                dtype,
                reps: reps.max(3),
            };
            let report = run_layer_bench(&opts, &mut |line| eprintln!("{line}"))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(out, "{}", report.table())?;
            }
        }
        Command::Bench {
            what: None,
            model,
            prefill,
            decode,
            batch,
            repeats,
            json,
        } => {
            on_device!(device, model, |engine| {
                let opts = BenchOptions {
                    prefill_lens: prefill,
                    decode_tokens: decode,
                    batch_sizes: batch,
                    repeats: repeats.max(1),
                };
                let report = run_bench(&engine, &opts)?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                } else {
                    write!(out, "{}", report.table())?;
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn kv_memory_sizes_are_positive_and_finite() {
        assert_eq!(parse_bytes("--kv-memory", "64K").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("--kv-memory", "1.5G").unwrap(), 3 << 29);
        for bad in ["nan", "inf", "0", "-1G", "0.5", "lots"] {
            assert!(parse_bytes("--kv-memory", bad).is_err(), "{bad}");
        }
    }
}
