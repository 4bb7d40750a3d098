//! The compose stack, checked without a Docker engine (none runs here): files parse and exist,
//! and every vigil command line in it is accepted by the binary the other tests exercise.

mod common;

use std::process::Command;

use anyhow::{ensure, Context};
use common::*;

#[test]
fn the_compose_stack_references_real_files_and_valid_commands() -> Result {
    let out = Command::new(python())
        .arg(repo().join("tests/tools/check_compose.py"))
        .arg(repo())
        .output()
        .context("run check_compose.py (bootstrap installs PyYAML into .venv)")?;
    ensure!(
        out.status.success(),
        "check_compose.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let problems = report["problems"].as_array().context("problems")?;
    ensure!(problems.is_empty(), "compose problems: {problems:?}");
    let commands = report["commands"].as_object().context("commands")?;
    for service in ["topics", "worker-1", "worker-2", "gateway", "alerts"] {
        ensure!(
            commands.contains_key(service),
            "service {service} runs vigil"
        );
    }
    for (service, cmd) in commands {
        let args: Vec<&str> = cmd
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        // clap rejects an unknown or malformed argument before it gets to --help.
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(&args)
            .arg("--help")
            .output()?;
        ensure!(
            out.status.success(),
            "{service}: `vigil {}` is not a valid command line: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
