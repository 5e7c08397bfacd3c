//! The `classguard` command line. Errors become one line on stderr; exit codes: 0 all inputs
//! handled, 1 some input failed, 2 usage or set-up error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{info, warn};

use classguard::app::{diff, enroll, models_cmd, scan, serve, slice_cmd, token, user};
use classguard::ingest;
use classguard::inspect::{self, InspectOptions};
use classguard::policy::Policy;
use classguard::slice::{Role, SliceOptions};
use classguard::store::Store;

#[derive(Parser)]
#[command(
    name = "classguard",
    version,
    about = "Audits recorded online classes: teacher identity, nudity, screen text and speech, as timestamped verdicts.",
    after_help = "Start with: classguard scan fixtures/browser/camera-vp8-opus.webm --out verdicts\n\
                  Models and ONNX Runtime are found under $CLASSGUARD_HOME (default ~/.local/share/classguard);\n\
                  install them with `classguard models fetch` (or scripts/setup). Logs: RUST_LOG=classguard=debug."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Audit recordings: a verdict (pass/review/block) with timestamped findings and evidence per recording.
    Scan {
        /// Recordings (.webm/.mkv), folders of them (searched recursively) and s3://bucket/prefix.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Check the camera against this enrolled teacher (see `enroll`).
        #[arg(long)]
        teacher: Option<String>,
        /// Audit policy TOML (default: the embedded pipelines/classroom.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Output folder or s3://bucket/prefix: <recording id>/verdict.json plus evidence and the
        /// extracted microphone.
        #[arg(long, short, default_value = "classguard-out")]
        out: String,
        /// Print every verdict as one JSON line on stdout (the summary table then goes to stderr).
        #[arg(long)]
        jsonl: bool,
        /// Class session these recordings belong to (default: file name without its role word).
        #[arg(long)]
        session: Option<String>,
        /// Role of the video track (default: from the file name).
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Recordings audited in parallel.
        #[arg(long, short = 'j', default_value_t = 1)]
        jobs: usize,
        /// Model workers per recording.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// SQLite store (default: $CLASSGUARD_STORE or the XDG data directory).
        #[arg(long, env = "CLASSGUARD_STORE")]
        store: Option<PathBuf>,
        /// S3-compatible server (MinIO, moto, ...); path-style addressing. Region and credentials
        /// come from the AWS environment and profiles.
        #[arg(long, env = "CLASSGUARD_S3_ENDPOINT")]
        endpoint_url: Option<String>,
        /// List what would be audited or skipped, and why; read no media and run no model.
        #[arg(long)]
        plan: bool,
        /// After the scan, report how decisions changed against these verdicts (folder or store).
        #[arg(long, value_name = "OLD")]
        compare_with: Option<String>,
        /// No progress bar, even on a terminal (a log line per recording instead).
        #[arg(long)]
        no_progress: bool,
    },
    /// Report how decisions and labels changed between two sets of verdicts (folders or stores).
    Diff {
        /// Verdict folder (`scan --out`), SQLite store file or postgres:// URL.
        old: String,
        new: String,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store a teacher's face template from verified photos (one face per photo; photos are not kept).
    Enroll {
        #[arg(long)]
        teacher: String,
        #[arg(required = true)]
        photos: Vec<PathBuf>,
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long, env = "CLASSGUARD_STORE")]
        store: Option<PathBuf>,
    },
    /// Erase a teacher: face templates and the evidence files linked to them.
    Erase {
        #[arg(long)]
        teacher: String,
        #[arg(long, env = "CLASSGUARD_STORE")]
        store: Option<PathBuf>,
    },
    /// Delete evidence files past their retention period.
    Expire {
        #[arg(long, env = "CLASSGUARD_STORE")]
        store: Option<PathBuf>,
    },
    /// Demux and sample recordings: slice JPEGs, the microphone track (not re-encoded) and slices.json.
    Slice {
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Policy whose [sampling] table to use (default: the embedded one).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Run the models on one input and print what they see, as JSON.
    Inspect {
        #[command(subcommand)]
        what: InspectCmd,
    },
    /// List or fetch the pinned models and ONNX Runtime.
    Models {
        #[command(subcommand)]
        what: ModelsCmd,
    },
    /// Run the push service: tus uploads at /files/, audited while they arrive (docs/service.md).
    Serve {
        /// Address to listen on (loopback by default; put a TLS proxy in front to expose it).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Store: a SQLite path or postgres://user@host:port/db (default: the local SQLite store).
        #[arg(long, env = "CLASSGUARD_DATABASE")]
        database: Option<String>,
        /// Uploaded bytes and audit outputs (default: `service` next to the default store).
        #[arg(long, env = "CLASSGUARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Recordings audited at once.
        #[arg(long, default_value_t = 2)]
        audit_workers: usize,
        /// Model workers per recording.
        #[arg(long, default_value_t = 1)]
        model_workers: usize,
        /// Largest upload accepted, in MiB.
        #[arg(long, default_value_t = 4096)]
        max_upload_mib: u64,
        /// Byte-carrying requests in flight per token.
        #[arg(long, default_value_t = 64)]
        max_concurrent_uploads: usize,
        /// Seconds a request body may send nothing before it is cut off (bytes so far are kept).
        #[arg(long, default_value_t = 60)]
        body_timeout_s: u64,
        /// Seconds without bytes after which an upload expires and is audited as partial.
        #[arg(long, default_value_t = 86_400)]
        upload_expiry_s: u64,
        /// Seconds a job's lease lasts without a heartbeat (then another worker takes it).
        #[arg(long, default_value_t = 30)]
        job_lease_s: u64,
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Seconds opening an item on the review page holds it for the reviewer (renewed while open).
        #[arg(long, default_value_t = 300)]
        review_claim_s: u64,
        /// Mark the review page's cookies Secure (set this behind a TLS proxy).
        #[arg(long)]
        secure_cookies: bool,
        /// S3-compatible server for `{"s3": ...}` uploads (path-style); region and credentials
        /// come from the AWS environment and profiles.
        #[arg(long, env = "CLASSGUARD_S3_ENDPOINT")]
        s3_endpoint_url: Option<String>,
        /// Scale-out mode: publish audit jobs to this NATS JetStream server (nats://host:port)
        /// for `classguard worker` processes instead of auditing here; needs --storage and a
        /// postgres:// --database every node shares.
        #[arg(long, env = "CLASSGUARD_QUEUE", requires = "storage")]
        queue: Option<String>,
        /// Scale-out mode: s3://bucket/prefix where uploaded bytes are stored for the workers.
        #[arg(long, env = "CLASSGUARD_STORAGE", requires = "queue")]
        storage: Option<String>,
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
    /// Scale-out mode: audit recordings from the queue (run any number, on any machine).
    Worker {
        /// NATS JetStream server, as given to `serve --queue`.
        #[arg(long, env = "CLASSGUARD_QUEUE")]
        queue: String,
        /// The shared storage, as given to `serve --storage`.
        #[arg(long, env = "CLASSGUARD_STORAGE")]
        storage: String,
        /// The shared postgres:// database.
        #[arg(long, env = "CLASSGUARD_DATABASE")]
        database: String,
        /// Recordings audited at once (a live upload's audit mostly waits for bytes).
        #[arg(long, short = 'j', default_value_t = 4)]
        jobs: usize,
        /// Model workers per recording.
        #[arg(long, default_value_t = 1)]
        model_workers: usize,
        /// Scratch folder for outputs until they are uploaded (default: a folder in the temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        #[arg(long)]
        policy: Option<PathBuf>,
        /// After SIGTERM, seconds running audits may take before they are handed back.
        #[arg(long, default_value_t = 30)]
        shutdown_grace_s: u64,
        #[arg(long, env = "CLASSGUARD_S3_ENDPOINT")]
        s3_endpoint_url: Option<String>,
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
    /// Scale-out mode: audit jobs in the shared database.
    Jobs {
        #[command(subcommand)]
        what: JobsCmd,
        /// Store: a SQLite path or postgres://... (default: the local SQLite store).
        #[arg(long, env = "CLASSGUARD_DATABASE", global = true)]
        database: Option<String>,
    },
    /// Manage staff accounts of the review page (/review); passwords are stored as argon2 hashes.
    User {
        #[command(subcommand)]
        what: UserCmd,
        /// Store: a SQLite path or postgres://... (default: the local SQLite store).
        #[arg(long, env = "CLASSGUARD_DATABASE", global = true)]
        database: Option<String>,
    },
    /// Manage the service's API tokens (printed once; only their hash is stored).
    Token {
        #[command(subcommand)]
        what: TokenCmd,
        /// Store: a SQLite path or postgres://... (default: the local SQLite store).
        #[arg(long, env = "CLASSGUARD_DATABASE", global = true)]
        database: Option<String>,
    },
}

/// How the queue redelivers (the same on every node: the first to start creates the consumer).
#[derive(clap::Args, Clone, Copy)]
struct DeliveryArgs {
    /// Seconds a delivered job may go without a progress ack before it is redelivered.
    #[arg(long, default_value_t = 60)]
    ack_wait_s: u64,
    /// Audits started per job (each ended by a crash, a kill or a hang past its lease) before
    /// the next delivery records a dead letter instead.
    #[arg(long, default_value_t = 3)]
    max_attempts: u64,
}

impl DeliveryArgs {
    fn queue_config(&self, url: &str) -> classguard::queue::QueueConfig {
        let mut q = classguard::queue::QueueConfig::new(url);
        q.ack_wait = std::time::Duration::from_secs(self.ack_wait_s.max(1));
        // Attempts are counted by the workers in the database, with leases (a broker restart
        // redelivers audits that are still running): the queue itself redelivers for ever.
        q.max_deliver = -1;
        q
    }
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Jobs that failed every attempt (newest first), for an operator to look into.
    Dead {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it (once).
    Create {
        #[arg(long)]
        name: String,
        /// POSTed a signed event when a verdict is final.
        #[arg(long)]
        webhook: Option<String>,
    },
    /// List tokens (never their values).
    List,
    /// Revoke a token: its requests get 401 from then on.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add an account; the password is prompted for (not echoed) or read from a file.
    Add {
        name: String,
        /// reviewer (decides), lead (also reopens, sees metrics and the audit log), admin (also manages accounts).
        #[arg(long, value_parser = ["reviewer", "lead", "admin"])]
        role: String,
        /// Read the password from the first line of this file instead of a prompt.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Set a new password (and clear a lockout).
    Passwd {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List accounts (never their passwords).
    List,
}

#[derive(Subcommand)]
enum InspectCmd {
    /// Faces, nudity probability and OCR lines of an image.
    Image {
        path: PathBuf,
        /// Also run NudeNet (AGPL-3.0 licensed; off by default).
        #[arg(long)]
        nudenet: bool,
    },
    /// Speech segments and transcript of an audio file (wav/ogg/opus/webm).
    Audio { path: PathBuf },
    /// Similarity of the largest face in two photos, and the decision at the policy threshold.
    Compare {
        a: PathBuf,
        b: PathBuf,
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// What is installed, with versions, hashes and licences.
    List {
        /// Re-hash every file against the manifest.
        #[arg(long)]
        verify: bool,
    },
    /// Download, verify and convert the pinned models (idempotent).
    Fetch {
        #[arg(long)]
        with_optional: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "classguard=info".into()),
        )
        .with_writer(scan::LogWriter)
        .init();
    match Cli::parse().command {
        Command::Scan {
            inputs,
            teacher,
            policy,
            out,
            jsonl,
            session,
            role,
            jobs,
            workers,
            store,
            endpoint_url,
            plan,
            compare_with,
            no_progress,
        } => {
            let out = match scan::OutputTarget::parse(&out) {
                Ok(o) => o,
                Err(e) => return fail(e.into(), 2),
            };
            let opts = scan::ScanOptions {
                inputs,
                teacher,
                policy,
                out,
                store,
                session,
                role,
                jobs,
                workers,
                jsonl,
                s3: ingest::s3::S3Options {
                    endpoint_url,
                    ..Default::default()
                },
                progress: no_progress.then_some(false),
            };
            if plan {
                run_plan(&opts)
            } else {
                run_scan(&opts, compare_with.as_deref())
            }
        }
        Command::Diff { old, new, json } => {
            let result = (|| -> anyhow::Result<diff::DiffReport> {
                let old = diff::VerdictSource::parse(&old).load()?;
                let new = diff::VerdictSource::parse(&new).load()?;
                Ok(diff::diff(&old, &new))
            })();
            match result {
                Ok(r) if json => {
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    print!("{}", r.text());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 2),
            }
        }
        Command::Enroll {
            teacher,
            photos,
            policy,
            store,
        } => {
            let result = (|| -> anyhow::Result<usize> {
                let policy = Policy::load(policy.as_deref())?;
                let mut store = open_store(store)?;
                Ok(enroll::enroll(&mut store, &policy, &teacher, &photos)?)
            })();
            match result {
                Ok(n) => {
                    println!("enrolled {n} face template(s) for teacher {teacher}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 1),
            }
        }
        Command::Erase { teacher, store } => match open_store(store)
            .and_then(|mut s| Ok(s.erase_teacher(&teacher)?))
        {
            Ok(paths) => {
                let removed = remove_files(&paths);
                println!("erased teacher {teacher}: face templates and {removed} evidence file(s)");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e, 1),
        },
        Command::Expire { store } => {
            match open_store(store)
                .and_then(|mut s| Ok(s.expire_evidence(time::OffsetDateTime::now_utc())?))
            {
                Ok(paths) => {
                    println!("expired {} evidence file(s)", remove_files(&paths));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 1),
            }
        }
        Command::Slice {
            inputs,
            out,
            role,
            policy,
        } => match Policy::load(policy.as_deref()) {
            Ok(p) => slice(inputs, out, role, p),
            Err(e) => fail(e.into(), 2),
        },
        Command::Inspect { what } => {
            let result = match what {
                InspectCmd::Image { path, nudenet } => inspect::inspect_image(
                    &path,
                    &InspectOptions {
                        nudenet,
                        ..Default::default()
                    },
                )
                .map_err(anyhow::Error::from),
                InspectCmd::Audio { path } => {
                    inspect::inspect_audio(&path).map_err(anyhow::Error::from)
                }
                InspectCmd::Compare { a, b, policy } => Policy::load(policy.as_deref())
                    .map_err(anyhow::Error::from)
                    .and_then(|p| {
                        inspect::inspect_compare(&a, &b, p.face.identity_threshold)
                            .map_err(anyhow::Error::from)
                    }),
            };
            match result {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 1),
            }
        }
        Command::Models { what } => match what {
            ModelsCmd::List { verify } => match models_cmd::list(verify) {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(anyhow::anyhow!(e), 1),
            },
            ModelsCmd::Fetch { with_optional } => match models_cmd::fetch(with_optional) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(anyhow::anyhow!(e), 1),
            },
        },
        Command::Serve {
            listen,
            database,
            data_dir,
            audit_workers,
            model_workers,
            max_upload_mib,
            max_concurrent_uploads,
            body_timeout_s,
            upload_expiry_s,
            job_lease_s,
            policy,
            review_claim_s,
            secure_cookies,
            s3_endpoint_url,
            queue,
            storage,
            delivery,
        } => {
            let result = (|| -> anyhow::Result<()> {
                let store = serve::open_store(database.as_deref())?;
                let data_dir = match data_dir {
                    Some(d) => d,
                    None => serve::default_data_dir()?,
                };
                let mut config = classguard::service::Config::new(data_dir);
                config.listen = listen;
                config.audit_workers = audit_workers.max(1);
                config.model_workers = model_workers.max(1);
                config.max_upload_bytes = max_upload_mib.saturating_mul(1 << 20);
                config.max_concurrent_uploads = max_concurrent_uploads.max(1);
                config.body_timeout = std::time::Duration::from_secs(body_timeout_s.max(1));
                config.upload_expiry = std::time::Duration::from_secs(upload_expiry_s.max(1));
                config.job_lease = std::time::Duration::from_secs(job_lease_s.max(1));
                config.policy = policy;
                config.review.claim_lease = std::time::Duration::from_secs(review_claim_s.max(1));
                config.review.secure_cookies = secure_cookies;
                config.s3.endpoint_url = s3_endpoint_url;
                if let (Some(q), Some(storage)) = (queue, storage) {
                    config.scale_out = Some(classguard::service::ScaleOut {
                        queue: delivery.queue_config(&q),
                        storage,
                    });
                }
                serve::run(store, config, |addr| {
                    // One line on stdout for scripts and tests: where to connect.
                    println!("listening on http://{addr}");
                })?;
                Ok(())
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e, 2),
            }
        }
        Command::Worker {
            queue,
            storage,
            database,
            jobs,
            model_workers,
            work_dir,
            policy,
            shutdown_grace_s,
            s3_endpoint_url,
            delivery,
        } => {
            let result = (|| -> anyhow::Result<()> {
                let store = serve::open_store(Some(&database))?;
                let name = classguard::worker::default_name();
                let work_dir = work_dir.unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("classguard-worker-{name}"))
                });
                let cfg = classguard::worker::WorkerConfig {
                    queue: delivery.queue_config(&queue),
                    storage,
                    s3: classguard::ingest::s3::S3Options {
                        endpoint_url: s3_endpoint_url,
                        ..Default::default()
                    },
                    jobs: jobs.max(1),
                    model_workers: model_workers.max(1),
                    work_dir,
                    policy,
                    shutdown_grace: std::time::Duration::from_secs(shutdown_grace_s),
                    name,
                    max_attempts: delivery.max_attempts.max(1) as i64,
                };
                classguard::worker::run(store, cfg)?;
                Ok(())
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e, 2),
            }
        }
        Command::Jobs { what, database } => {
            let result = (|| -> anyhow::Result<()> {
                let store = serve::open_store(database.as_deref())?;
                match what {
                    JobsCmd::Dead { json } => {
                        let dead = store.dead_letters()?;
                        if json {
                            for d in &dead {
                                println!(
                                    "{}",
                                    serde_json::json!({
                                        "job": d.job_id,
                                        "recording": d.recording_id,
                                        "attempts": d.attempts,
                                        "reason": d.reason,
                                        "at_ms": d.at_ms,
                                    })
                                );
                            }
                        } else if dead.is_empty() {
                            println!("no dead letters");
                        } else {
                            println!("{:<8} {:<28} {:>8}  reason", "job", "recording", "attempts");
                            for d in &dead {
                                println!(
                                    "{:<8} {:<28} {:>8}  {}",
                                    d.job_id, d.recording_id, d.attempts, d.reason
                                );
                            }
                        }
                    }
                }
                Ok(())
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e, 1),
            }
        }
        Command::User { what, database } => {
            let result = (|| -> anyhow::Result<()> {
                let store = serve::open_store(database.as_deref())?;
                match what {
                    UserCmd::Add {
                        name,
                        role,
                        password_file,
                    } => {
                        let password = user::read_password(password_file.as_deref())?;
                        let row = user::add(&store, &name, &role, &password)?;
                        println!("added {} account {}", row.role, row.name);
                    }
                    UserCmd::Passwd {
                        name,
                        password_file,
                    } => {
                        let password = user::read_password(password_file.as_deref())?;
                        user::set_password(&store, &name, &password)?;
                        println!("password of {name} set");
                    }
                    UserCmd::List => print!("{}", user::list(&store)?),
                }
                Ok(())
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e, 1),
            }
        }
        Command::Token { what, database } => {
            let result = (|| -> anyhow::Result<()> {
                let store = serve::open_store(database.as_deref())?;
                match what {
                    TokenCmd::Create { name, webhook } => {
                        let c = token::create(&store, &name, webhook.as_deref())?;
                        println!("token: {}", c.token);
                        if c.row.webhook_url.is_some() {
                            println!("webhook secret: {}", c.webhook_secret);
                        }
                        eprintln!("store the token now: it is not shown again");
                    }
                    TokenCmd::List => print!("{}", token::list(&store)?),
                    TokenCmd::Revoke { name } => {
                        token::revoke(&store, &name)?;
                        println!("revoked token {name}");
                    }
                }
                Ok(())
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e, 1),
            }
        }
    }
}

fn open_store(path: Option<PathBuf>) -> anyhow::Result<Store> {
    Ok(match path {
        Some(p) => Store::open(&p)?,
        None => Store::open_default()?,
    })
}

fn remove_files(paths: &[PathBuf]) -> usize {
    paths
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

fn fail(e: anyhow::Error, code: u8) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(code)
}

fn run_plan(opts: &scan::ScanOptions) -> ExitCode {
    match scan::plan(opts) {
        Ok((rows, errors)) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            print!("{}", scan::plan_table(&rows));
            if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(e.into(), 2),
    }
}

fn run_scan(opts: &scan::ScanOptions, compare_with: Option<&str>) -> ExitCode {
    // Loaded first: a typo in OLD should not cost a whole scan.
    let old = match compare_with.map(|o| diff::VerdictSource::parse(o).load()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => return fail(e.into(), 2),
    };
    let jsonl = opts.jsonl;
    let summary = scan::run(opts, |v| {
        if jsonl {
            println!("{}", serde_json::to_string(v).unwrap_or_default());
        }
    });
    match summary {
        Ok(s) => {
            if jsonl {
                eprint!("{}", s.table());
            } else {
                print!("{}", s.table());
            }
            if let Some(old) = &old {
                let report = diff::diff(old, &s.verdicts).text();
                if jsonl {
                    eprint!("{report}");
                } else {
                    print!("{report}");
                }
            }
            if s.failed() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(e.into(), 2),
    }
}

fn slice(inputs: Vec<PathBuf>, out: PathBuf, role: Option<Role>, policy: Policy) -> ExitCode {
    let (recordings, errors) = ingest::expand_inputs(&inputs);
    let mut failed = errors.len();
    for e in &errors {
        eprintln!("error: {e}");
    }
    for rec in &recordings {
        let opts = SliceOptions {
            role,
            sampling: policy.sampling.clone(),
            ..SliceOptions::default()
        };
        match slice_cmd::slice_one(rec, &out, opts) {
            Ok(m) => {
                info!(recording = %rec.id, slices = m.slices.len(), partial = m.partial, "sliced");
                println!(
                    "{}\t{} slices\t{} ms{}\t{}",
                    rec.id,
                    m.slices.len(),
                    m.duration_ms,
                    m.partial_reason
                        .as_deref()
                        .map(|r| format!("\tPARTIAL: {r}"))
                        .unwrap_or_default(),
                    slice_cmd::recording_dir(&out, rec).display()
                );
            }
            Err(e) => {
                warn!(recording = %rec.id, "slicing failed");
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
