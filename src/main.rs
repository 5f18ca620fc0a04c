//! The `micro` binary: completion, parse, run, and map the outcome to an exit code. Everything else is in the
//! library.

use micro_cli::cli;
use micro_cli::exit::{self, ExitStatus};
use std::process::ExitCode;

/// mimalloc: the server's request paths allocate a lot of small, short-lived buffers, where it is markedly faster
/// than the system allocator (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    clap_complete::CompleteEnv::with_factory(cli::completion::completion_command).complete();
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version asked for go to stdout (exit 0); a usage error to stderr, as bad input (128).
            let _ = e.print();
            return exit::from_clap(e.kind()).into();
        }
    };
    if cli.command.is_none() {
        // `micro` alone: the help, on stderr, and the bad-input code (as Micro).
        eprint!("{}", cli::no_command_help());
        return ExitStatus::InvalidInput.into();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitStatus::Failure.into();
        }
    };
    let outcome = runtime.block_on(cli::exec(cli));
    // Do not wait for blocking reads (stdin of a stream) that will never finish.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitStatus::Success.into(),
        Err(err) => {
            let (status, message) = exit::classify(&err);
            if !message.is_empty() {
                eprintln!("{message}");
            }
            status.into()
        }
    }
}
