//! `sener`: long-document named-entity extraction with SeNER.

mod bench;
mod cli;
mod data_cmds;
mod encode;
mod extract;
mod score;
mod train;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
