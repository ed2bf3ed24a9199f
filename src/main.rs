//! `cargo run --release -- <args>` runs `python3 -m textjepa <args>`, as the seed's commands expect.
//!
//! The work is all in the Python package; this launcher only keeps the seed's documented
//! `cargo run --release -- --train-world ...` commands working. `PYTHON` picks the interpreter
//! (default `python3`); the repository root is put on PYTHONPATH so a checkout works uninstalled.
//! The exit code (or the terminating signal, as 128 + signal) is passed on.

use std::env;
use std::path::PathBuf;
use std::process::{exit, Command};

fn main() {
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut python_path = repo_root.into_os_string();
    if let Some(existing) = env::var_os("PYTHONPATH") {
        if !existing.is_empty() {
            python_path.push(if cfg!(windows) { ";" } else { ":" });
            python_path.push(existing);
        }
    }
    let status = Command::new(&python)
        .arg("-m")
        .arg("textjepa")
        .args(env::args_os().skip(1))
        .env("PYTHONPATH", python_path)
        .status();
    match status {
        Ok(status) => exit(exit_code(status)),
        Err(err) => {
            eprintln!("error: cannot run {python} -m textjepa: {err} (set PYTHON to a Python with textjepa)");
            exit(127);
        }
    }
}

#[cfg(unix)]
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(not(unix))]
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(1)
}
