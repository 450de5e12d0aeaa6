//! The program itself (the `alexnet` binary) stopped by signals while it trains: the
//! first SIGINT or SIGTERM finishes the step and writes a checkpoint from which the run
//! resumes; a second one exits at once. (The resumed run's exactness, bit for bit, is
//! tested in-process by the workspace's tests/cli.rs.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("alexnet-signal-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `alexnet train` on generated images, checkpointing into `dir`, long enough to be
/// interrupted (a line per step).
fn train(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args([
            "train",
            "--device",
            "cpu",
            "--images",
            "512",
            "--val-images",
            "16",
        ])
        .args([
            "--batch",
            "8",
            "--log-every",
            "1",
            "--epochs",
            "1",
            "--checkpoint",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the child's stdout until a line contains `needle`; returns what it read.
fn wait_for(child: &mut Child, needle: &str) -> String {
    let out = child.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("the run ended before `{needle}`:\n{seen}");
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_signal_finishes_the_step_checkpoints_and_the_run_resumes() {
    for sig in ["INT", "TERM"] {
        let d = dir(sig);
        let mut child = train(&d);
        wait_for(&mut child, "step      3:");
        signal(&child, sig);
        let (code, stderr) = finish(child);
        assert_eq!(code, 130, "{sig}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: interrupted at epoch 1, step "))
            .unwrap_or_else(|| panic!("{sig}: {stderr}"));
        assert!(line.contains("go on with `train --resume"), "{line}");
        let state = d.join("state.safetensors");
        assert!(
            state.exists() && d.join("data.safetensors").exists(),
            "{sig}"
        );
        // The checkpoint resumes (in-process) and the run finishes its epoch.
        let mut out = Vec::new();
        let state_arg = state.to_str().unwrap();
        alexnet_cli::run(
            [
                "alexnet",
                "train",
                "--device",
                "cpu",
                "--images",
                "512",
                "--val-images",
                "16",
                "--batch",
                "8",
                "--log-every",
                "100000",
                "--epochs",
                "1",
                "--resume",
                state_arg,
            ],
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{sig}: resume: {e}"));
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains("resumed") && out.contains("epoch 1 done"),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn a_second_signal_exits_at_once_and_corrupts_nothing() {
    let d = dir("twice");
    // AlexNet itself, two images a step: a step is long enough (a few hundred ms) for the
    // second signal to arrive while the first waits for it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args([
            "train", "--net", "alexnet", "--device", "cpu", "--images", "64",
        ])
        .args([
            "--val-images",
            "4",
            "--classes",
            "4",
            "--batch",
            "2",
            "--log-every",
            "1",
        ])
        .args(["--epochs", "1", "--checkpoint"])
        .arg(&d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut child, "step      2:");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    signal(&child, "INT");
    while let Ok(line) = rx.recv() {
        if line.contains("stopping after this step") {
            break;
        }
    }
    signal(&child, "INT");
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("stopped at once (second signal)"),
        "{stderr}"
    );
    // No file is half-written: a state present (none is expected) loads.
    let state = d.join("state.safetensors");
    if state.exists() {
        alexnet::runtime::weights::read_safetensors(&state)
            .unwrap_or_else(|e| panic!("a torn checkpoint: {e}"));
    }
    let _ = std::fs::remove_dir_all(&d);
}
