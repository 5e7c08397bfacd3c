//! The `classguard` command line. Errors become one line on stderr and a non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{info, warn};

use classguard::app::slice_cmd;
use classguard::ingest;
use classguard::slice::{Role, SliceOptions};

#[derive(Parser)]
#[command(name = "classguard", version, about = "Audits recorded online classes: faces, nudity, screen text and speech, as timestamped verdicts.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Demux and sample recordings: slice JPEGs, the microphone track (not re-encoded) and slices.json.
    Slice {
        /// Recordings (.webm/.mkv) or folders of them.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder; each recording gets a sub-folder named by its recording id.
        #[arg(long, short)]
        out: PathBuf,
        /// Role of the video track (default: from the file name; screen/desktop/whiteboard/share mean desktop).
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "classguard=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Slice { inputs, out, role } => slice(inputs, out, role),
    }
}

fn slice(inputs: Vec<PathBuf>, out: PathBuf, role: Option<Role>) -> ExitCode {
    let (recordings, errors) = ingest::expand_inputs(&inputs);
    let mut failed = errors.len();
    for e in &errors {
        eprintln!("error: {e}");
    }
    for rec in &recordings {
        let opts = SliceOptions {
            role,
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
                    if m.partial { "\tPARTIAL" } else { "" },
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
