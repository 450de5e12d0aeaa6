//! The command line as a user runs it, called in-process: `alexnet_cli::run_with` with
//! the arguments the program would get, its output captured. Tests run in parallel
//! threads of this process; no command changes the current directory or the environment.

use std::ffi::{OsStr, OsString};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use alexnet::nets::SmallNet;
use alexnet::runtime::weights::{parse_metadata, read_safetensors, write_safetensors, NamedTensor};
use alexnet::runtime::{Batch, Cpu};

/// A command line of the program `alexnet`, built as a `std::process::Command` is.
struct Alexnet(Vec<OsString>);

fn alexnet() -> Alexnet {
    Alexnet(vec!["alexnet".into()])
}

/// What a command line did: its result, what it printed on stdout and its own notices on
/// stderr (those of the program's stderr other than progress bars, runtime notices and
/// the final `error: ` line, which is `result`'s message).
struct Output {
    result: Result<(), alexnet_cli::Error>,
    stdout: String,
    stderr: String,
}

impl Alexnet {
    fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(arg.as_ref().to_os_string());
        self
    }

    fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self.arg(arg);
        }
        self
    }

    /// Runs the command line in this thread; a panic fails the test, naming it.
    fn output(&self) -> Output {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            alexnet_cli::run_with(self.0.clone(), &mut out, &mut err)
        }));
        let Ok(result) = result else {
            panic!("{:?} panicked", self.0);
        };
        Output {
            result,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        }
    }
}

/// A writer that keeps what it is given and raises `stop` once `needle` has been
/// written: a command's own output tells the test when to interrupt it.
struct StopAt<'a> {
    text: Vec<u8>,
    needle: &'a str,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl std::io::Write for StopAt<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(b);
        if String::from_utf8_lossy(&self.text).contains(self.needle) {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Alexnet {
    /// [`Alexnet::output`], asking the command to stop (as a SIGINT does) once its output
    /// contains `needle`.
    fn output_until(&self, needle: &str) -> Output {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut out = StopAt {
            text: Vec::new(),
            needle,
            stop: &stop,
        };
        let mut err = Vec::new();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            alexnet_cli::run_until(self.0.clone(), &mut out, &mut err, &stop)
        }));
        let Ok(result) = result else {
            panic!("{:?} panicked", self.0);
        };
        Output {
            result,
            stdout: String::from_utf8_lossy(&out.text).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        }
    }
}

impl Output {
    fn success(&self) -> bool {
        self.result.is_ok()
    }

    /// The error's message (what the program prints after `error: `), or "".
    fn error(&self) -> String {
        self.result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alexnet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd` (the command line), asserts that it succeeded and returns its output.
fn succeeds(cmd: &mut Alexnet) -> String {
    let out = cmd.output();
    assert!(
        out.success(),
        "{}\n{}\nerror: {}",
        out.stdout,
        out.stderr,
        out.error()
    );
    out.stdout
}

/// Runs `cmd`, asserts that it failed with an error message, not a panic, and returns
/// the message.
fn fails(cmd: &mut Alexnet) -> String {
    let out = cmd.output();
    let err = out.error();
    assert!(!out.success() && !err.is_empty(), "{}", out.stdout);
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn summary_prints_the_layer_table() {
    let text = succeeds(alexnet().args(["summary", "--net", "alexnet"]));
    for needle in ["96x55x55", "256x6x6", "total parameters: 60,965,224", "fc8"] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    assert!(!text.contains("memory at batch"), "{text}");
    let text = succeeds(alexnet().args(["summary", "--net", "alexnet", "--batch", "128"]));
    let line = text
        .lines()
        .find(|l| l.starts_with("memory at batch 128 (f32 device buffers): inference "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("(weights 243.9 MB, batch ")
            && line.contains("gradients and momentum 487.7 MB"),
        "{line}"
    );
}

#[test]
fn infer_writes_logits_and_probabilities() {
    let dir = tmp();
    let (w, x, y) = (
        dir.join("w.safetensors"),
        dir.join("x.safetensors"),
        dir.join("y.safetensors"),
    );
    let net = SmallNet::new(Cpu::new(), 5).unwrap();
    net.save(&w).unwrap();
    let data: Vec<f32> = (0..3 * 3 * 32 * 32)
        .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
        .collect();
    write_safetensors(
        &x,
        &[NamedTensor {
            name: "input".into(),
            shape: vec![3, 3, 32, 32],
            data: data.clone(),
        }],
        None,
    )
    .unwrap();
    succeeds(&mut infer_small(&w, &x, &y));
    let written = read_safetensors(&y).unwrap();
    let probs = written.iter().find(|t| t.name == "probabilities").unwrap();
    let logits = written.iter().find(|t| t.name == "logits").unwrap();
    assert_eq!(probs.shape, vec![3, 10]);
    assert_eq!(logits.shape, vec![3, 10]);
    let want = net
        .forward(&Batch::<3, 32, 32>::from_vec(3, data).unwrap())
        .unwrap();
    assert_eq!(probs.data, want.as_tensor().data());
    assert_ne!(logits.data, probs.data);
}

#[test]
fn user_errors_are_one_line_not_a_panic() {
    let out = alexnet()
        .args([
            "infer",
            "--device",
            "cpu",
            "--weights",
            "/nonexistent/w.safetensors",
            "--input",
            "x",
            "--output",
            "y",
        ])
        .output();
    assert_eq!(out.result.as_ref().err().map(|e| e.exit_code()), Some(1));
    // The error is all the program prints on stderr: `error: ` and one line.
    assert_eq!(out.stderr, "");
    let err = out.error();
    assert!(err.starts_with("/nonexistent/w.safetensors: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"));
}

/// `--precision`: tf32 needs a GPU, so the CPU asked for by name refuses it in one line;
/// `auto` that falls back to the CPU computes f32 there (with a notice on standard
/// error); a precision the project does not have is a usage error; bf16 runs on the CPU.
#[test]
fn a_tensor_core_precision_is_refused_on_the_cpu() {
    let err = fails(alexnet().args([
        "bench",
        "--net",
        "small",
        "--device",
        "cpu",
        "--precision",
        "tf32",
        "--batch",
        "1",
    ]));
    assert!(
        err.starts_with("precision tf32 runs on a GPU's tensor cores; the CPU backend computes in f32 or bf16 (give --precision f32, or a GPU in --device)"),
        "{err}"
    );
    let err = fails(alexnet().args([
        "bench",
        "--net",
        "small",
        "--towers",
        "cpu,cpu",
        "--precision",
        "tf32",
        "--batch",
        "1",
    ]));
    assert!(
        err.ends_with("(give --precision f32, or a GPU in --towers)"),
        "{err}"
    );
    // f16 is a GPU's too; an unknown precision is a usage error.
    let err = fails(alexnet().args([
        "bench",
        "--net",
        "small",
        "--device",
        "cpu",
        "--precision",
        "f16",
    ]));
    assert!(
        err.starts_with("precision f16 runs on a GPU's tensor cores"),
        "{err}"
    );
    let out = alexnet()
        .args(["bench", "--net", "small", "--precision", "fp8"])
        .output();
    assert!(
        matches!(out.result, Err(alexnet_cli::Error::Usage(_))),
        "{}",
        out.error()
    );
    assert!(out.error().contains("fp8"), "{}", out.error());
    // bf16 is the CPU's.
    let text = succeeds(alexnet().args([
        "bench",
        "--net",
        "small",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--batch",
        "2",
        "--runs",
        "1",
    ]));
    assert!(text.contains("bf16 products"), "{text}");
    if alexnet::runtime::Cuda::unavailable_reason().is_some() {
        let text = succeeds(alexnet().args([
            "bench",
            "--net",
            "small",
            "--device",
            "auto",
            "--precision",
            "tf32",
            "--batch",
            "1",
            "--runs",
            "1",
        ]));
        assert!(text.contains("forward on cpu"), "{text}");
    }
}

/// `--device` is one clap struct flattened into every command that runs a network, with
/// one help text; `--schedule` is parsed by clap, so a bad one is a usage error.
#[test]
fn device_help_and_schedule_parsing() {
    for command in ["demo", "bench", "train", "eval", "classify", "infer"] {
        let help = succeeds(alexnet().args([command, "--help"]));
        assert!(
            help.contains("--device <DEVICE>")
                && help.contains("cpu, cuda, cuda:N or auto (the GPU when there is one)")
                && help.contains("[default: auto]"),
            "{command}:\n{help}"
        );
        assert!(
            help.contains("--precision <PRECISION>")
                && help.contains("[default: f32]")
                && help.contains("tf32"),
            "{command}:\n{help}"
        );
    }
    let out = alexnet()
        .args(["train", "--schedule", "weekly", "--epochs", "0"])
        .output();
    assert!(
        matches!(out.result, Err(alexnet_cli::Error::Usage(_))),
        "{}",
        out.error()
    );
    assert_eq!(out.result.as_ref().err().map(|e| e.exit_code()), Some(2));
    let err = out.error();
    assert!(
        err.contains("--schedule")
            && err.contains(
                "`constant`, `plateau[:FACTOR[:PATIENCE[:FLOOR]]]` or `step:EPOCHS[:FACTOR[:FLOOR]]`"
            ),
        "{err}"
    );
}

#[test]
fn train_checkpoints_and_resumes_exactly() {
    let root = tmp();
    let run = |dir: &str, extra: &[&str]| {
        let out = alexnet()
            .args([
                "train",
                "--device",
                "cpu",
                "--images",
                "256",
                "--val-images",
                "64",
            ])
            .args(["--log-every", "4", "--checkpoint"])
            .arg(root.join(dir))
            .args(extra)
            .output();
        (out.success(), out.stdout.clone(), out.error())
    };
    let (ok, text, err) = run("a", &["--epochs", "1"]);
    assert!(ok, "{text}\n{err}");
    assert!(text.contains("epoch 1 step      4: loss"), "{text}");
    assert!(text.contains("images/s"), "{text}");
    assert!(text.contains("epoch 1 done"), "{text}");
    let state = root.join("a").join("state.safetensors");
    assert!(state.exists());
    let (ok, text, err) = run("a", &["--epochs", "2", "--resume", state.to_str().unwrap()]);
    assert!(ok, "{text}\n{err}");
    assert!(text.contains("at epoch 1, step 8"), "{text}");
    assert!(text.contains("epoch 2 step     12: loss"), "{text}");
    assert!(text.contains("epoch 2 done"), "{text}");
    // The resumed run's state is, bit for bit, that of a run never stopped: every tensor
    // (weights and momentum) and every metadata entry.
    let (ok, _, err) = run("b", &["--epochs", "2"]);
    assert!(ok, "{err}");
    let straight = root.join("b").join("state.safetensors");
    assert!(
        read_safetensors(&state).unwrap() == read_safetensors(&straight).unwrap(),
        "resumed tensors differ"
    );
    let meta = |p: &PathBuf| parse_metadata(&std::fs::read(p).unwrap()).unwrap();
    assert_eq!(meta(&state), meta(&straight));

    // Other data settings, or a hyper-parameter, are refused on resume: one line each.
    for extra in [&["--batch", "16"][..], &["--lr", "0.5"]] {
        let mut args = vec!["--epochs", "3", "--resume", state.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, _, err) = run("a", &args);
        assert!(!ok && !err.is_empty(), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let (ok, _, err) = run("c", &["--lr=-1"]);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
}

/// Writes `n` PNGs per class of generated shapes (40x40) under `dir/<class>/`.
fn image_folder(dir: &std::path::Path, n: u64, offset: u64) {
    let data = alexnet::runtime::Synthetic::new(2, 3, 40, 40, 5).unwrap();
    for i in offset..offset + 2 * n {
        let (x, label) = data.sample(i);
        let class = dir.join(["disk", "square"][label as usize]);
        std::fs::create_dir_all(&class).unwrap();
        let img = image::RgbImage::from_fn(40, 40, |cx, cy| {
            let at = |c: usize| {
                let v = x[(c * 40 + cy as usize) * 40 + cx as usize];
                ((v + 1.0) * 127.5).clamp(0.0, 255.0) as u8
            };
            image::Rgb([at(0), at(1), at(2)])
        });
        img.save(class.join(format!("{i}.png"))).unwrap();
    }
}

#[test]
fn train_on_an_image_folder_skips_and_reports_broken_files() {
    let root = tmp().join("folder");
    let _ = std::fs::remove_dir_all(&root);
    image_folder(&root.join("train"), 24, 0);
    image_folder(&root.join("val"), 8, 1000);
    std::fs::write(
        root.join("train").join("disk").join("broken.jpg"),
        "not a jpeg",
    )
    .unwrap();
    let text = succeeds(
        alexnet()
            .args(["train", "--device", "cpu", "--epochs", "1", "--batch", "16"])
            .args(["--log-every", "1", "--data"])
            .arg(&root)
            .arg("--checkpoint")
            .arg(root.join("run")),
    );
    assert!(
        text.contains("49 files, 2 classes (disk, square)"),
        "{text}"
    );
    assert!(text.contains("validation: 16 files"), "{text}");
    assert!(text.contains("1 file(s) skipped"), "{text}");
    assert!(text.contains("broken.jpg"), "{text}");
    // 48 good images in batches of 16: three steps.
    assert!(text.contains("epoch 1 step      3: loss"), "{text}");
    assert!(
        text.contains("epoch 1 done") && text.contains("validation loss"),
        "{text}"
    );
    let run = root.join("run");
    for file in ["state.safetensors", "data.safetensors", "curves.png"] {
        assert!(run.join(file).exists(), "{file}");
    }
    let png = image::open(run.join("curves.png")).unwrap();
    assert!(png.width() >= 800 && png.height() >= 300);

    // eval: the run's validation images, centre crop and ten crops, a line per class.
    let text = succeeds(
        alexnet()
            .args(["eval", "--device", "cpu", "--checkpoint"])
            .arg(&run),
    );
    assert!(
        text.contains(": 16 images, centre crop and ten crops"),
        "{text}"
    );
    assert!(text.contains("centre crop: top-1 error"), "{text}");
    assert!(text.contains("ten crops  : top-1 error"), "{text}");
    assert!(text.contains("top-5 error 0.00%"), "{text}");
    let rows = text
        .lines()
        .filter(|l| l.starts_with("disk ") || l.starts_with("square "))
        .count();
    assert_eq!(rows, 2, "{text}");

    // classify: top 5 of each image with the class names; an unreadable file is named and
    // the command fails after classifying the rest.
    let image = root.join("val").join("square").join("1001.png");
    let text = succeeds(
        alexnet()
            .args(["classify", "--device", "cpu", "--ten-crop", "--checkpoint"])
            .arg(&run)
            .arg(&image),
    );
    assert!(text.contains("1001.png:"), "{text}");
    // Two classes trained (of ten outputs): both listed, nothing else.
    let probs: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("  1. ") || l.starts_with("  2. "))
        .map(|l| {
            l.trim_end_matches('%')
                .split_whitespace()
                .last()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(probs.len(), 2, "{text}");
    assert!(
        probs[0] >= probs[1] && probs.iter().sum::<f64>() <= 100.01,
        "{text}"
    );
    assert!(!text.contains("  3. "), "{text}");
    assert!(
        text.contains(" disk ") && text.contains(" square "),
        "{text}"
    );
    let broken = root.join("train").join("disk").join("broken.jpg");
    let out = alexnet()
        .args(["classify", "--device", "cpu", "--checkpoint"])
        .arg(&run)
        .arg(&broken)
        .arg(&image)
        .output();
    let err = out.stderr.clone();
    assert!(!out.success(), "{err}");
    assert!(
        err.contains("broken.jpg: skipped: not a JPEG or PNG image"),
        "{err}"
    );
    assert!(
        out.error().contains("1 of 2 images could not be read"),
        "{err}\nerror: {}",
        out.error()
    );
    assert!(out.stdout.contains("1001.png:"));

    // filters: the first layer's 16 5x5 kernels, two towers of 8.
    // By default large enough to see: the smallest zoom that makes it 800 pixels wide.
    let text = succeeds(alexnet().args(["filters", "--checkpoint"]).arg(&run));
    let grid = image::open(run.join("filters.png")).unwrap();
    // 8 columns of 5x20-pixel patches with 2-pixel gaps; two tower blocks and a 10-pixel gap.
    assert_eq!((grid.width(), grid.height()), (8 * 102 + 2, 2 * 104 + 10));
    assert!(text.contains("818x218 pixels"), "{text}");
    // --zoom overrides it: 8 pixels per weight.
    succeeds(
        alexnet()
            .args(["filters", "--zoom", "8", "--checkpoint"])
            .arg(&run),
    );
    let grid = image::open(run.join("filters.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (8 * 42 + 2, 2 * 44 + 10));

    // A checkpoint of another network is refused, naming the tensor that does not fit.
    let err = fails(
        alexnet()
            .args(["filters", "--net", "torchvision", "--checkpoint"])
            .arg(&run),
    );
    assert!(err.contains("conv1.weight"), "{err}");

    // A folder without images is a one-line error.
    let empty = root.join("empty");
    std::fs::create_dir_all(empty.join("nothing")).unwrap();
    let err = fails(
        alexnet()
            .args(["train", "--device", "cpu", "--checkpoint"])
            .arg(root.join("empty-run"))
            .arg("--data")
            .arg(&empty),
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `train --towers cpu,cpu` trains the network as two towers; its state file is the
/// unsplit one, so the run resumes unsplit and ends where a run never split ends (within
/// float rounding: the towers sum in another order).
#[test]
fn train_split_into_towers_and_resume_unsplit() {
    let root = tmp().join("towers");
    let _ = std::fs::remove_dir_all(&root);
    let run = |dir: &str, extra: &[&str]| {
        succeeds(
            alexnet()
                .args([
                    "train",
                    "--images",
                    "128",
                    "--val-images",
                    "32",
                    "--log-every",
                    "2",
                ])
                .arg("--checkpoint")
                .arg(root.join(dir))
                .args(extra),
        )
    };
    let text = run("split", &["--towers", "cpu,cpu", "--epochs", "1"]);
    assert!(text.starts_with("towers: cpu"), "{text}");
    let state = root.join("split").join("state.safetensors");
    let text = run(
        "split",
        &[
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--resume",
            state.to_str().unwrap(),
        ],
    );
    assert!(text.contains("at epoch 1, step 4"), "{text}");
    run("whole", &["--device", "cpu", "--epochs", "2"]);
    let split = read_safetensors(&state).unwrap();
    let whole = read_safetensors(&root.join("whole").join("state.safetensors")).unwrap();
    assert_eq!(split.len(), whole.len());
    for (s, w) in split.iter().zip(&whole) {
        assert_eq!((&s.name, &s.shape), (&w.name, &w.shape));
        let num: f64 = s
            .data
            .iter()
            .zip(&w.data)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let den: f64 = w.data.iter().map(|b| f64::from(*b).powi(2)).sum();
        let e = (num / den.max(1e-30)).sqrt();
        assert!(
            e <= 1e-4,
            "{}: relative L2 {e:.2e} between split-then-whole and whole",
            s.name
        );
    }
    // A network that is not split cannot be trained as towers: one line.
    let err = fails(alexnet().args([
        "train",
        "--net",
        "torchvision",
        "--towers",
        "cpu,cpu",
        "--images",
        "8",
    ]));
    assert!(err.contains("is not split into two towers"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A run's state and the data file beside it belong together: `eval` refuses a data file
/// prepared for another run, and `--resume` without `--checkpoint` goes on in the resumed
/// run's own folder. (The runs are in `root`, named by full paths: the commands run in
/// this process, whose current directory no test changes.)
#[test]
fn checkpoints_keep_their_own_data_and_folder() {
    let root = tmp().join("pairing");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let (r1, r2) = (root.join("r1"), root.join("r2"));
    let r1_state = r1.join("state.safetensors");
    let train = |args: &[&OsStr]| {
        let out = alexnet()
            .args([
                "train",
                "--device",
                "cpu",
                "--images",
                "64",
                "--val-images",
                "16",
            ])
            .args(args)
            .output();
        (out.success(), out.stdout.clone(), out.error())
    };
    let os = |s: &'static str| OsStr::new(s);
    let (ok, _, err) = train(&[os("--epochs"), os("1"), os("--checkpoint"), r1.as_os_str()]);
    assert!(ok, "{err}");
    let (ok, _, err) = train(&[
        os("--epochs"),
        os("1"),
        os("--seed"),
        os("5"),
        os("--checkpoint"),
        r2.as_os_str(),
    ]);
    assert!(ok, "{err}");
    // Resuming without --checkpoint writes into r1, not runs/small.
    let (ok, text, err) = train(&[
        os("--epochs"),
        os("2"),
        os("--resume"),
        r1_state.as_os_str(),
    ]);
    assert!(ok, "{text}\n{err}");
    assert!(
        text.contains(&format!("saved {}", r1_state.display())),
        "{text}"
    );
    assert!(!text.contains("runs/small"), "{text}");
    assert!(!root.join("runs").exists());
    // r2's data file in r1: eval and resume both refuse, in one line.
    std::fs::copy(r2.join("data.safetensors"), r1.join("data.safetensors")).unwrap();
    let err = fails(
        alexnet()
            .args(["eval", "--device", "cpu", "--checkpoint"])
            .arg(&r1),
    );
    assert!(err.contains("seed=0") && err.contains("seed=5"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (ok, _, err) = train(&[
        os("--epochs"),
        os("3"),
        os("--resume"),
        r1_state.as_os_str(),
    ]);
    assert!(!ok && err.contains("was prepared for"), "{err}");
}

#[test]
fn an_interrupted_run_checkpoints_mid_epoch_and_resumes_bit_for_bit() {
    let root = tmp().join("interrupt");
    let train = |dir: &str| {
        let mut cmd = alexnet();
        cmd.args([
            "train",
            "--device",
            "cpu",
            "--images",
            "96",
            "--val-images",
            "32",
        ])
        .args([
            "--batch",
            "16",
            "--log-every",
            "1",
            "--epochs",
            "2",
            "--checkpoint",
        ])
        .arg(root.join(dir));
        cmd
    };
    // Stopped after step 8 (epoch 2, its third batch) and after step 6 (the end of epoch
    // 1's training, before its validation), each resumed to the end.
    for (dir, needle, done) in [
        (
            "mid",
            "epoch 2 step      8:",
            "epoch 2, step 8 (32 of the epoch's 96",
        ),
        (
            "val",
            "epoch 1 step      6:",
            "epoch 1, step 6 (96 of the epoch's 96",
        ),
    ] {
        let out = train(dir).output_until(needle);
        let err = out.error();
        let Err(e) = &out.result else {
            panic!("{dir}: not interrupted: {}", out.stdout)
        };
        assert_eq!(e.exit_code(), 130, "{err}");
        assert!(
            err.starts_with("interrupted at ") && err.contains(done),
            "{dir}: {err}"
        );
        assert!(err.contains("--resume"), "{err}");
        let state = root.join(dir).join("state.safetensors");
        let out = alexnet()
            .args([
                "train",
                "--device",
                "cpu",
                "--images",
                "96",
                "--val-images",
                "32",
            ])
            .args([
                "--batch",
                "16",
                "--log-every",
                "1",
                "--epochs",
                "2",
                "--resume",
            ])
            .arg(&state)
            .output();
        assert!(out.success(), "{dir}: {}", out.error());
        assert!(out.stdout.contains("epoch 2 done"), "{}", out.stdout);
    }
    let out = train("straight").output();
    assert!(out.success(), "{}", out.error());
    let straight = root.join("straight").join("state.safetensors");
    let meta = |p: &PathBuf| parse_metadata(&std::fs::read(p).unwrap()).unwrap();
    for dir in ["mid", "val"] {
        let state = root.join(dir).join("state.safetensors");
        assert!(
            read_safetensors(&state).unwrap() == read_safetensors(&straight).unwrap(),
            "{dir}: resumed tensors differ from a run never stopped"
        );
        assert_eq!(meta(&state), meta(&straight), "{dir}");
    }
}

#[test]
fn a_step_that_is_not_finite_stops_the_run_or_is_skipped() {
    let root = tmp().join("nan");
    let train = |extra: &[&str]| {
        alexnet()
            .args([
                "train",
                "--device",
                "cpu",
                "--images",
                "64",
                "--val-images",
                "16",
            ])
            .args(["--batch", "16", "--log-every", "1"])
            .args(extra)
            .output()
    };
    let dir = root.join("run");
    let out = train(&["--epochs", "1", "--checkpoint", dir.to_str().unwrap()]);
    assert!(out.success(), "{}", out.error());
    // The same state with a learning rate that makes the next steps blow up.
    let state = dir.join("state.safetensors");
    let bytes = std::fs::read(&state).unwrap();
    let mut meta = parse_metadata(&bytes).unwrap();
    // (Without weight decay: with it such a rate is refused as out of range.)
    meta.insert("lr".into(), "1e30".into());
    meta.insert("weight_decay".into(), "0.0".into());
    let tensors = read_safetensors(&state).unwrap();
    write_safetensors(&state, &tensors, Some(meta)).unwrap();
    let before = std::fs::read(&state).unwrap();
    let resume = ["--epochs", "2", "--resume", state.to_str().unwrap()];
    let out = train(&resume);
    let err = out.error();
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        err.starts_with("step ") && err.contains("is not finite"),
        "{err}"
    );
    assert!(err.contains("the update not applied"), "{err}");
    assert!(
        err.contains(state.to_str().unwrap()),
        "names the last checkpoint: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "the checkpoint moved"
    );

    let mut args = resume.to_vec();
    args.extend(["--on-nan", "skip"]);
    let out = train(&args);
    assert!(out.success(), "{}", out.error());
    assert!(
        out.stdout.contains("update skipped (--on-nan skip)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("epoch 2 done"), "{}", out.stdout);
}

/// A tmpfs mounted on a folder for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB on `dir` for the test `name`: directly where the test
    /// may mount (root); otherwise the test runs again inside a user namespace (`unshare
    /// -rm`), where it may, this call asserts that it passed there and returns `None`.
    /// Also `None`, with a notice, where neither is possible (outside CI).
    fn mount(dir: &std::path::Path, kib: u64, name: &str) -> Option<Tmpfs> {
        use std::process::Command;
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        assert!(
            std::env::var_os("ALEXNET_TEST_USERNS").is_none(),
            "cannot mount a tmpfs even in a user namespace"
        );
        let userns = Command::new("unshare")
            .args(["-rm", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !userns {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name}: cannot mount a tmpfs (not root, no user namespaces) in CI"
            );
            eprintln!("skipped {name}: cannot mount a tmpfs (not root, no user namespaces)");
            return None;
        }
        let status = Command::new("unshare")
            .args(["-rm", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env("ALEXNET_TEST_USERNS", "1")
            .status()
            .unwrap();
        assert!(status.success(), "{name} failed in a user namespace");
        None
    }

    fn remount_read_only(&self) {
        let ok = std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {} read-only", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_or_warns_and_the_previous_stays() {
    let root = tmp().join("full");
    let train = |extra: &[&str]| {
        alexnet()
            .args([
                "train",
                "--device",
                "cpu",
                "--images",
                "64",
                "--val-images",
                "16",
            ])
            .args(["--batch", "16", "--log-every", "1"])
            .args(extra)
            .output()
    };
    let src = root.join("src");
    let out = train(&["--epochs", "1", "--checkpoint", src.to_str().unwrap()]);
    assert!(out.success(), "{}", out.error());
    let files = ["state.safetensors", "data.safetensors", "curves.png"];
    let size: u64 = files
        .iter()
        .map(|f| std::fs::metadata(src.join(f)).unwrap().len())
        .sum();
    let state_len = std::fs::metadata(src.join("state.safetensors"))
        .unwrap()
        .len();
    // Room for the run's files and a little more, not for a second state file.
    let kib = (size + state_len / 2).div_ceil(1024);
    let fs = root.join("tmpfs");
    let Some(mount) = Tmpfs::mount(
        &fs,
        kib,
        "a_checkpoint_that_cannot_be_written_stops_or_warns_and_the_previous_stays",
    ) else {
        return;
    };
    for f in files {
        std::fs::copy(src.join(f), fs.join(f)).unwrap();
    }
    let state = fs.join("state.safetensors");
    let before = std::fs::read(&state).unwrap();
    let resume = ["--epochs", "2", "--resume", state.to_str().unwrap()];
    let leftovers = || {
        std::fs::read_dir(&fs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect::<Vec<_>>()
    };
    for (why, read_only) in [
        ("No space left on device", false),
        ("Read-only file system", true),
    ] {
        if read_only {
            mount.remount_read_only();
        }
        let out = train(&resume);
        let err = out.error();
        assert!(!out.success(), "{why}: {}", out.stdout);
        assert!(
            err.starts_with("could not write the checkpoint: ") && err.contains(why),
            "{err}"
        );
        let wanted = if read_only {
            "data.safetensors"
        } else {
            "state.safetensors"
        };
        assert!(
            err.contains(&*fs.join(wanted).to_string_lossy()),
            "names the file: {err}"
        );
        assert!(err.contains("bytes"), "says the bytes needed: {err}");
        assert!(
            err.contains(&format!(
                "the previous checkpoint {} is intact",
                state.display()
            )),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(
            std::fs::read(&state).unwrap(),
            before,
            "{why}: the checkpoint changed"
        );
        assert_eq!(leftovers(), Vec::<String>::new(), "{why}");

        let mut args = resume.to_vec();
        args.extend(["--checkpoint-errors", "warn"]);
        let out = train(&args);
        assert!(out.success(), "{why}: {}", out.error());
        assert!(
            out.stderr
                .contains("warning: could not write the checkpoint: ")
                && out.stderr.contains(why),
            "{}",
            out.stderr
        );
        assert!(out.stdout.contains("epoch 2 done") && out.stdout.contains("NOT saved"));
        assert_eq!(
            std::fs::read(&state).unwrap(),
            before,
            "{why}: the checkpoint changed"
        );
        assert_eq!(leftovers(), Vec::<String>::new(), "{why}");
    }
    // The intact checkpoint still resumes (elsewhere).
    let out = train(&[
        "--epochs",
        "2",
        "--resume",
        state.to_str().unwrap(),
        "--checkpoint",
        root.join("elsewhere").to_str().unwrap(),
    ]);
    assert!(out.success(), "{}", out.error());
}

/// A folder for one test's files.
fn folder(name: &str) -> PathBuf {
    let dir = tmp().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Another network's training state is a valid safetensors file: the error says whose
/// state it is, once, in the runtime and on the command line.
#[test]
fn another_network_s_state_is_not_called_invalid_safetensors() {
    use alexnet::nets::AlexNet;
    use alexnet::runtime::{Model, TrainConfig, Trainer};
    let state = folder("other-net").join("state.safetensors");
    let model = Model::init(Cpu::new(), SmallNet::plan().clone(), 1).unwrap();
    Trainer::new(model, TrainConfig::default())
        .unwrap()
        .save(&state)
        .unwrap();
    let want = format!(
        "{}: training state of network `SmallNet`, not `AlexNet`",
        state.display()
    );
    let err = Trainer::resume(Cpu::new(), AlexNet::plan().clone(), &state).unwrap_err();
    assert_eq!(err.to_string(), want);
    let err = fails(
        alexnet()
            .args(["train", "--device", "cpu", "--net", "alexnet", "--resume"])
            .arg(&state),
    );
    assert_eq!(err, want);
}

/// A state file that is not safetensors: `train --resume` says so once.
#[test]
fn resuming_a_broken_state_says_it_once() {
    let junk = folder("broken-state").join("state.safetensors");
    std::fs::write(&junk, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    let err = fails(
        alexnet()
            .args(["train", "--device", "cpu", "--resume"])
            .arg(&junk),
    );
    assert!(
        err.starts_with(&format!(
            "{}: not a valid safetensors file: ",
            junk.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches("safetensors").count(), 2, "{err}");
}

/// An input of integers is a wrong input file, not weights that do not match.
#[test]
fn an_integer_input_is_not_called_mismatched_weights() {
    let dir = folder("integer-input");
    let (w, x) = (dir.join("w.safetensors"), dir.join("x.safetensors"));
    SmallNet::new(Cpu::new(), 5).unwrap().save(&w).unwrap();
    let ints = vec![0u8; 4 * 3 * 32 * 32];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![1, 3, 32, 32], &ints)
            .unwrap();
    std::fs::write(&x, safetensors::serialize([("input", view)], None).unwrap()).unwrap();
    let err = fails(&mut infer_small(&w, &x, &dir.join("y.safetensors")));
    assert_eq!(
        err,
        format!(
            "{}: tensor `input` has dtype I32; expected F32 (or F16, BF16, F64)",
            x.display()
        )
    );
}

/// An input of the wrong shape: the error names the file and what the network takes.
#[test]
fn a_mis_shaped_input_names_the_file() {
    let dir = folder("mis-shaped-input");
    let (w, x) = (dir.join("w.safetensors"), dir.join("x.safetensors"));
    SmallNet::new(Cpu::new(), 5).unwrap().save(&w).unwrap();
    for shape in [vec![3, 32, 32], vec![1, 3, 32, 31], vec![]] {
        let n = shape.iter().product();
        let t = NamedTensor {
            name: "input".into(),
            shape: shape.clone(),
            data: vec![0.5; n],
        };
        write_safetensors(&x, &[t], None).unwrap();
        let err = fails(&mut infer_small(&w, &x, &dir.join("y.safetensors")));
        let shown = format!(
            "[{}]",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert_eq!(
            err,
            format!(
                "{}: tensor `input` has shape {shown}; `SmallNet` takes [N, 3, 32, 32] (N images)",
                x.display()
            )
        );
    }
}

/// Every hyper-parameter is checked before a run starts, by the rule a resumed run is
/// checked with: an out-of-range one is a one-line error naming its flag, and nothing is
/// written.
#[test]
fn out_of_range_hyper_parameters_are_refused_at_the_start() {
    let root = tmp().join("hyper");
    let _ = std::fs::remove_dir_all(&root);
    for (flag, value) in [
        ("--momentum", "2"),
        ("--momentum", "-1"),
        ("--weight-decay", "-1"),
        ("--weight-decay", "nan"),
        ("--weight-decay", "inf"),
        ("--lr", "0"),
    ] {
        let dir = root.join(format!("{flag}{value}"));
        let out = alexnet()
            .args(["train", "--device", "cpu", "--images", "64", "--val-images"])
            .args(["16", "--epochs", "2", "--checkpoint"])
            .arg(&dir)
            .arg(format!("{flag}={value}"))
            .output();
        let err = out.error();
        assert!(!out.success(), "{flag} {value}: {}", out.stdout);
        assert!(
            err.starts_with(&format!("{flag} ")),
            "{flag} {value}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.stdout.contains("epoch 1"), "{}", out.stdout);
        assert!(!dir.join("state.safetensors").exists(), "{flag} {value}");
        if flag != "--lr" {
            assert!(!err.contains("--lr"), "{err}");
        }
    }
}

/// The plateau schedule divides the learning rate down to a floor (three divisions by 10
/// by default, as in the paper), then ends the run cleanly; the learning rates print
/// readably, and the finished run still resumes (to say that it is over).
#[test]
fn the_plateau_schedule_stops_at_its_floor() {
    let root = tmp().join("floor");
    let _ = std::fs::remove_dir_all(&root);
    // A learning rate too small to learn anything: the validation error never improves
    // after the first epoch, so the schedule divides after every other.
    let train = |extra: &[&str]| {
        succeeds(
            alexnet()
                .args(["train", "--device", "cpu", "--images", "64", "--val-images"])
                .args(["16", "--batch", "32", "--checkpoint"])
                .arg(&root)
                .args(extra),
        )
    };
    let text = train(&[
        "--lr",
        "1e-6",
        "--schedule",
        "plateau:0.1:1",
        "--epochs",
        "30",
    ]);
    for lr in ["1e-7", "1e-8", "1e-9"] {
        assert!(
            text.contains(&format!("learning rate now {lr};")),
            "{lr}:\n{text}"
        );
    }
    assert!(!text.contains("learning rate now 1e-10"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("stopping after epoch ") && last.contains("floor"),
        "{text}"
    );
    assert!(!text.contains("epoch 30 done"), "{text}");
    let state = root.join("state.safetensors");
    let meta = parse_metadata(&std::fs::read(&state).unwrap()).unwrap();
    let lr: f32 = meta["lr"].parse().unwrap();
    assert!((lr / 1e-9 - 1.0).abs() < 1e-3, "{lr}");
    let text = train(&["--epochs", "40", "--resume", state.to_str().unwrap()]);
    assert!(text.contains("learning rate 1e-9"), "{text}");
    assert!(!text.contains(" done in "), "{text}");
    assert!(text.contains("nothing to train"), "{text}");
    assert!(
        text.lines().last().unwrap_or_default().contains("floor"),
        "{text}"
    );
}

/// A data folder in which no image can be read is an error naming the folder and how
/// many files were skipped: for training (before a step, and for a validation split) and
/// for eval.
#[test]
fn a_folder_without_a_usable_image_is_an_error() {
    let root = tmp().join("unusable");
    let _ = std::fs::remove_dir_all(&root);
    let broken = |dir: &std::path::Path| {
        for (class, file) in [("disk", "a.png"), ("square", "b.jpg"), ("square", "c.png")] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            std::fs::write(dir.join(class).join(file), "not an image").unwrap();
        }
    };
    let bad = root.join("bad");
    broken(&bad);
    let train = |data: &std::path::Path, run: &str| {
        alexnet()
            .args([
                "train", "--device", "cpu", "--epochs", "1", "--batch", "4", "--data",
            ])
            .arg(data)
            .arg("--checkpoint")
            .arg(root.join(run))
            .output()
    };
    let out = train(&bad, "bad-run");
    let err = out.error();
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("3 file(s) skipped"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!root.join("bad-run").join("state.safetensors").exists());

    // Good training images, a validation split of broken ones.
    let split = root.join("split");
    image_folder(&split.join("train"), 4, 0);
    broken(&split.join("val"));
    let out = train(&split, "split-run");
    let err = out.error();
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        err.contains(&split.join("val").display().to_string()) && err.contains("3 file(s) skipped"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // eval of a trained run on the broken folder.
    let good = root.join("good");
    image_folder(&good, 4, 0);
    let out = train(&good, "good-run");
    assert!(out.success(), "{}", out.error());
    let out = alexnet()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(root.join("good-run"))
        .arg("--data")
        .arg(&bad)
        .output();
    let err = out.error();
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("3 file(s) skipped"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A resumed run (its preprocessing saved) whose images have all gone bad since.
    for entry in std::fs::read_dir(good.join("disk")).unwrap() {
        std::fs::write(entry.unwrap().path(), "gone bad").unwrap();
    }
    for entry in std::fs::read_dir(good.join("square")).unwrap() {
        std::fs::write(entry.unwrap().path(), "gone bad").unwrap();
    }
    let state = root.join("good-run").join("state.safetensors");
    let out = alexnet()
        .args([
            "train", "--device", "cpu", "--epochs", "2", "--batch", "4", "--data",
        ])
        .arg(&good)
        .arg("--resume")
        .arg(&state)
        .output();
    let err = out.error();
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        err.contains(&good.display().to_string())
            && err.contains("in epoch 2")
            && err.contains("8 file(s) skipped"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Non-finite inputs or weights are an error naming the file and the tensor, never
/// plausible probabilities.
#[test]
fn infer_refuses_non_finite_inputs_and_weights() {
    let dir = tmp().join("nonfinite");
    std::fs::create_dir_all(&dir).unwrap();
    let (w, x, y) = (
        dir.join("w.safetensors"),
        dir.join("x.safetensors"),
        dir.join("y.safetensors"),
    );
    SmallNet::new(Cpu::new(), 5).unwrap().save(&w).unwrap();
    let good: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let write_input = |data: &[f32]| {
        write_safetensors(
            &x,
            &[NamedTensor {
                name: "input".into(),
                shape: vec![2, 3, 32, 32],
                data: data.to_vec(),
            }],
            None,
        )
        .unwrap()
    };
    let infer = |weights: &std::path::Path| infer_small(weights, &x, &y).output();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut data = good.clone();
        data[1000] = bad;
        write_input(&data);
        let _ = std::fs::remove_file(&y);
        let out = infer(&w);
        let err = out.error();
        assert!(!out.success(), "{bad}: {}", out.stdout);
        assert!(
            err.contains(&x.display().to_string()) && err.contains("`input`"),
            "{bad}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!y.exists(), "{bad}");
    }
    write_input(&good);
    let tensors = read_safetensors(&w).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut broken = tensors.clone();
        let t = broken
            .iter_mut()
            .find(|t| t.name == "conv1.weight")
            .unwrap();
        t.data[7] = bad;
        let wb = dir.join("w-bad.safetensors");
        write_safetensors(&wb, &broken, None).unwrap();
        let out = infer(&wb);
        let err = out.error();
        assert!(!out.success(), "{bad}: {}", out.stdout);
        assert!(
            err.contains(&wb.display().to_string()) && err.contains("`conv1.weight`"),
            "{bad}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let out = infer(&w);
    assert!(out.success(), "{}", out.error());
}

/// Temporary files that a killed run left in its folder (the atomic writer's
/// `.NAME.tmp-PID-N`) are removed when the next run starts there, with a notice; those of a
/// live writer are kept.
#[cfg(target_os = "linux")]
#[test]
fn a_run_removes_the_temporary_files_of_a_killed_one() {
    let dir = tmp().join("stale");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A process id no process has.
    let dead = (2..4_000_000u32)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let me = std::process::id();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let file = |name: String, modified: Option<std::time::SystemTime>| {
        let path = dir.join(name);
        let f = std::fs::File::create(&path).unwrap();
        if let Some(t) = modified {
            f.set_modified(t).unwrap();
        }
        path
    };
    let stale = [
        file(format!(".state.safetensors.tmp-{dead}-0"), None),
        file(format!(".curves.png.tmp-{dead}-12"), None),
        // Process 1 is alive, but started after this file was written: another writer.
        file(".data.safetensors.tmp-1-3".into(), Some(old)),
    ];
    let kept = [
        // A live writer: this process (another thread), written just now.
        file(format!(".state.safetensors.tmp-{me}-4"), None),
        file(".notes.txt".into(), None),
        file(format!(".state.safetensors.tmp-{dead}"), None),
    ];
    let out = alexnet()
        .args([
            "train",
            "--device",
            "cpu",
            "--images",
            "32",
            "--val-images",
            "8",
        ])
        .args(["--epochs", "1", "--checkpoint"])
        .arg(&dir)
        .output();
    assert!(out.success(), "{}", out.error());
    for p in &stale {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
    let notice: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("temporary"))
        .collect();
    assert_eq!(notice.len(), 1, "{}", out.stderr);
    assert!(
        notice[0].contains("3 ") && notice[0].contains(&dir.display().to_string()),
        "{}",
        notice[0]
    );
}

/// `train` with the arguments of a small run on generated images (32 of them, 8 held out).
/// `infer` of the small net on the CPU: weights `w`, input `x`, output `y`.
fn infer_small(w: &std::path::Path, x: &std::path::Path, y: &std::path::Path) -> Alexnet {
    let mut cmd = alexnet();
    cmd.args(["infer", "--device", "cpu", "--net", "small", "--weights"])
        .arg(w)
        .arg("--input")
        .arg(x)
        .arg("--output")
        .arg(y);
    cmd
}

fn small_train() -> Alexnet {
    let mut cmd = alexnet();
    cmd.args([
        "train",
        "--device",
        "cpu",
        "--images",
        "32",
        "--val-images",
        "8",
    ]);
    cmd
}

/// A folder that already holds a run is not overwritten by a new run: the error names
/// the folder and the flags to choose from; `--overwrite` replaces it, and a resumed run
/// goes on in its own folder (not into another run's).
#[test]
fn train_refuses_to_overwrite_a_run() {
    let root = folder("overwrite");
    let (a, b) = (root.join("a"), root.join("b"));
    for dir in [&a, &b] {
        let _ = std::fs::remove_dir_all(dir);
        succeeds(
            small_train()
                .args(["--epochs", "1", "--checkpoint"])
                .arg(dir),
        );
    }
    let state = a.join("state.safetensors");
    let before = std::fs::read(&state).unwrap();
    let err = fails(
        small_train()
            .args(["--epochs", "1", "--seed", "3", "--checkpoint"])
            .arg(&a),
    );
    assert_eq!(
        err,
        format!(
            "{} already holds a run ({}); to go on with it: `--resume {}`; to start another: `--checkpoint <another folder>`; to replace it: `--overwrite`",
            a.display(),
            state.display(),
            a.display()
        )
    );
    assert_eq!(std::fs::read(&state).unwrap(), before, "the run changed");
    // Resuming a into b, which holds another run, is refused too.
    let err = fails(
        small_train()
            .args(["--epochs", "2", "--resume"])
            .arg(&state)
            .arg("--checkpoint")
            .arg(&b),
    );
    assert!(
        err.starts_with(&format!("{} already holds a run", b.display())),
        "{err}"
    );
    // Not `--resume b`: that would go on with b's run, not the one given.
    assert!(!err.contains("--resume"), "{err}");
    let text = succeeds(
        small_train()
            .args([
                "--epochs",
                "1",
                "--seed",
                "3",
                "--overwrite",
                "--checkpoint",
            ])
            .arg(&a),
    );
    assert!(text.contains("epoch 1 done"), "{text}");
    assert_ne!(std::fs::read(&state).unwrap(), before, "not replaced");
    let help = succeeds(alexnet().args(["train", "--help"]));
    assert!(help.contains("--overwrite"), "{help}");
}

/// `--epochs` counts every epoch of a run: 0 is a usage error, and a resumed run that
/// has done that many already is an error saying so, not a banner and exit code 0.
#[test]
fn epochs_that_train_nothing_are_refused() {
    let out = small_train().args(["--epochs", "0"]).output();
    assert!(
        matches!(out.result, Err(alexnet_cli::Error::Usage(_))),
        "{}",
        out.error()
    );
    assert!(out.error().contains("--epochs"), "{}", out.error());
    let dir = folder("epochs-done");
    let _ = std::fs::remove_dir_all(&dir);
    succeeds(
        small_train()
            .args(["--epochs", "2", "--checkpoint"])
            .arg(&dir),
    );
    let state = dir.join("state.safetensors");
    for epochs in ["1", "2"] {
        let err = fails(
            small_train()
                .args(["--epochs", epochs, "--resume"])
                .arg(&state),
        );
        assert_eq!(
            err,
            format!(
                "nothing to train: {} has done 2 epoch(s), and --epochs {epochs} counts every epoch of the run; give --epochs 3 or more to train on",
                state.display()
            )
        );
    }
}

/// `--resume` takes a run's folder as `eval`, `classify` and `filters` do; those say,
/// before any training, that there is no run there yet and how to make one.
#[test]
fn a_run_folder_resumes_and_a_missing_run_says_how_to_make_one() {
    let dir = folder("resume-folder");
    let _ = std::fs::remove_dir_all(&dir);
    succeeds(
        small_train()
            .args(["--epochs", "1", "--checkpoint"])
            .arg(&dir),
    );
    let text = succeeds(small_train().args(["--epochs", "2", "--resume"]).arg(&dir));
    assert!(
        text.contains(&format!(
            "resumed {} at epoch 1",
            dir.join("state.safetensors").display()
        )),
        "{text}"
    );
    assert!(text.contains("epoch 2 done"), "{text}");

    let none = folder("no-run-yet").join("runs").join("small");
    let want = format!(
        "no run in {} yet (no {}): `alexnet train --checkpoint {}` trains one there",
        none.display(),
        none.join("state.safetensors").display(),
        none.display()
    );
    for exists in [false, true] {
        let _ = std::fs::remove_dir_all(&none);
        if exists {
            std::fs::create_dir_all(&none).unwrap();
        }
        for cmd in [
            vec!["eval", "--device", "cpu"],
            vec!["classify", "--device", "cpu", "photo.jpg"],
            vec!["filters"],
            vec!["train", "--device", "cpu", "--resume"],
        ] {
            let mut c = alexnet();
            c.args(&cmd);
            if cmd[0] != "train" {
                c.arg("--checkpoint");
            }
            let err = fails(c.arg(&none));
            assert_eq!(err, want, "{cmd:?}, folder exists: {exists}");
        }
    }
    let file = none.join("w.safetensors");
    let err = fails(alexnet().args(["filters", "--checkpoint"]).arg(&file));
    assert!(
        err.starts_with(&format!("{}: no such file", file.display()))
            && err.contains("alexnet train"),
        "{err}"
    );
}

/// More generated classes than the network has outputs is an error naming the count.
#[test]
fn more_classes_than_outputs_is_an_error() {
    let dir = folder("classes");
    let _ = std::fs::remove_dir_all(&dir);
    let err = fails(
        small_train()
            .args(["--epochs", "1", "--classes", "12", "--checkpoint"])
            .arg(&dir),
    );
    assert_eq!(
        err,
        "--classes 12: `SmallNet` has 10 outputs, so at most 10 classes"
    );
    assert!(!dir.join("state.safetensors").exists());
    // The generated set's options mean nothing with an image folder: refused, not ignored.
    for flag in ["--classes", "--images", "--val-images"] {
        let out = alexnet()
            .args(["train", "--device", "cpu", flag, "8", "--data"])
            .arg(&dir)
            .output();
        assert!(
            matches!(out.result, Err(alexnet_cli::Error::Usage(_)))
                && out.error().contains(flag)
                && out.error().contains("--data"),
            "{flag}: {}",
            out.error()
        );
    }
}

/// `demo --weights` that cannot be loaded fails before printing the layer table.
#[test]
fn demo_checks_its_weights_before_the_summary() {
    let missing = folder("demo").join("missing.safetensors");
    let out = alexnet()
        .args(["demo", "--device", "cpu", "--weights"])
        .arg(&missing)
        .output();
    assert!(!out.success());
    assert!(
        out.error().contains("missing.safetensors"),
        "{}",
        out.error()
    );
    assert_eq!(out.stdout, "");
}

/// `bench`: a stage of a convolution with its ReLU fused is labelled `conv1+relu`, each
/// stage is put against the CPU's measured ceilings, `--runs 0` is a usage error, and the
/// towers say where each runs and how they exchange.
#[test]
fn bench_labels_its_stages_and_towers() {
    let text = succeeds(alexnet().args([
        "bench", "--net", "small", "--device", "cpu", "--batch", "1", "--runs", "1", "--towers",
        "cpu,cpu",
    ]));
    let stages = text
        .lines()
        .find(|l| l.trim_start().starts_with("stages (ms): "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        stages.contains("stages (ms): conv1+relu ") && stages.contains(", conv2+relu "),
        "{stages}"
    );
    assert!(!stages.contains("relu1"), "{stages}");
    // On the CPU each stage is put against the measured ceilings: the cores' peak where
    // the CPU has AVX-512 (the sgemm's rate otherwise), and the read bandwidth.
    #[cfg(target_arch = "x86_64")]
    let avx512 = is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    assert!(
        text.lines().any(|l| l.starts_with("ceilings: ")
            && l.contains(" GFLOP/s")
            && l.contains(" GB/s")
            && l.contains("vfmadd231ps zmm peak ") == avx512),
        "{text}"
    );
    let roof = text
        .lines()
        .find(|l| l.trim_start().starts_with("against the ceilings: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        roof.contains("against the ceilings: conv1+relu ") && roof.contains("% of peak)"),
        "{roof}"
    );
    let towers = text.lines().next().unwrap_or_default();
    assert!(
        towers.starts_with("towers: tower 0 on cpu")
            && towers.contains("; tower 1 on cpu")
            && towers.contains("host memory")
            && !towers.contains("same memory"),
        "{towers}"
    );
    let out = alexnet()
        .args(["bench", "--net", "small", "--device", "cpu", "--runs", "0"])
        .output();
    assert!(
        matches!(out.result, Err(alexnet_cli::Error::Usage(_))) && out.error().contains("--runs"),
        "{}",
        out.error()
    );
}

/// `infer --output` naming the input (or the weights), however spelled, is refused and
/// the file left as it was.
#[test]
fn infer_does_not_overwrite_its_input() {
    let dir = folder("infer-same");
    let (w, x) = (dir.join("w.safetensors"), dir.join("x.safetensors"));
    SmallNet::new(Cpu::new(), 5).unwrap().save(&w).unwrap();
    let t = NamedTensor {
        name: "input".into(),
        shape: vec![1, 3, 32, 32],
        data: vec![0.25; 3 * 32 * 32],
    };
    write_safetensors(&x, &[t], None).unwrap();
    let before = std::fs::read(&x).unwrap();
    let weights = std::fs::read(&w).unwrap();
    for (output, what, path) in [
        (x.clone(), "input", &x),
        (dir.join(".").join("x.safetensors"), "input", &x),
        (w.clone(), "weights", &w),
    ] {
        let err = fails(&mut infer_small(&w, &x, &output));
        assert_eq!(
            err,
            format!(
                "--output {} is the {what} file {}: name another file",
                output.display(),
                path.display()
            )
        );
    }
    assert_eq!(std::fs::read(&x).unwrap(), before);
    assert_eq!(std::fs::read(&w).unwrap(), weights);
}

/// Every flag of every command has a help text, and no command says it runs on the CPU
/// when it honours `--device`.
#[test]
fn every_flag_has_a_help_text() {
    let top = succeeds(alexnet().arg("--help"));
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "{top}");
    let mut missing = Vec::new();
    for command in &commands {
        let help = succeeds(alexnet().args([command, "-h"]));
        // Each entry of the options: its first line starts with `-`, any more lines are
        // indented further.
        let mut entries: Vec<String> = Vec::new();
        for line in help
            .lines()
            .skip_while(|l| !l.starts_with("Options:"))
            .skip(1)
            .take_while(|l| !l.is_empty())
        {
            if line.trim_start().starts_with('-') {
                entries.push(line.trim().to_string());
            } else if let Some(e) = entries.last_mut() {
                e.push(' ');
                e.push_str(line.trim());
            }
        }
        for entry in entries {
            // Past the flag (`--flag <VALUE>` or `-h, --help`), what is left other than
            // clap's `[default: ...]` and `[possible values: ...]`.
            let mut rest = entry.as_str();
            while let Some(r) = rest.strip_prefix('-') {
                let end = r.find([' ', ',']).unwrap_or(r.len());
                rest = r[end..].trim_start_matches(',').trim_start();
                if rest.starts_with('<') {
                    rest = rest[rest.find('>').map_or(rest.len(), |i| i + 1)..].trim_start();
                }
            }
            while rest.starts_with("[default: ") || rest.starts_with("[possible values: ") {
                rest = rest[rest.find(']').map_or(rest.len(), |i| i + 1)..].trim_start();
            }
            if rest.is_empty() {
                missing.push(format!("{command} {entry}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags without help:\n{}",
        missing.join("\n")
    );
    for command in ["demo", "bench"] {
        let help = succeeds(alexnet().args([command, "--help"]));
        assert!(!help.contains("on CPU"), "{command}:\n{help}");
    }
}

/// `kernels --report`: every compiled kernel gets a roofline row (NVRTC needed; skipped
/// with a notice without it, except under CI).
#[test]
fn kernels_report_gives_every_kernel_a_roofline_row() {
    if !alexnet::runtime::cuda::nvrtc::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "NVRTC is not loadable in CI"
        );
        eprintln!("skipped: libnvrtc.so.13 not loadable (see .ci/run for the wheel)");
        return;
    }
    let out = alexnet()
        .args([
            "kernels",
            "--net",
            "small",
            "--training",
            "--report",
            "--batch",
            "64",
        ])
        .output();
    out.result.as_ref().unwrap();
    let text = &out.stdout;
    assert!(text.contains("roofline at batch 64 on an H200"), "{text}");
    let table = text.split("roofline at batch").nth(1).unwrap();
    let kernels = alexnet::codegen::cuda::kernels(SmallNet::plan());
    for spec in kernels.forward.iter().chain(kernels.training.iter()) {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(spec.name()))
            .unwrap_or_else(|| panic!("no row for {}:\n{table}", spec.name()));
        // name, registers, shared bytes, blocks per SM, grid, GFLOP, MB, model time, bound.
        let cols: Vec<&str> = row.split_whitespace().collect();
        let num = |i: usize| cols[i].parse::<f64>().unwrap_or_else(|_| panic!("{row}"));
        assert_eq!(num(5) > 0.0, spec.gemm.is_some(), "GFLOP of {row}");
        assert!(num(6) > 0.0 && num(7) >= 0.0, "{row}");
        assert!(num(3) >= 1.0, "no block fits: {row}");
    }
    assert!(text.contains("model total: forward"), "{text}");
    assert!(text.contains("training kernels"), "{text}");
}

/// `prepare` turns an image folder into a prepared set that `train` and `eval` read in
/// place of the folder, with the same images, classes and split.
#[test]
fn train_and_eval_on_a_prepared_set() {
    let root = tmp().join("prepared");
    let _ = std::fs::remove_dir_all(&root);
    image_folder(&root.join("src").join("train"), 24, 0);
    image_folder(&root.join("src").join("val"), 8, 1000);
    std::fs::write(
        root.join("src")
            .join("train")
            .join("square")
            .join("bad.png"),
        "not a png",
    )
    .unwrap();
    let set = root.join("set");
    let text = succeeds(
        alexnet()
            .args(["prepare", "--size", "37", "--shard-images", "20", "--data"])
            .arg(root.join("src"))
            .arg("--out")
            .arg(&set),
    );
    assert!(
        text.contains("train: 48 images from 49 files in 3 shard(s) (3 written, 0 kept"),
        "{text}"
    );
    assert!(
        text.contains("1 file(s) skipped") && text.contains("bad.png"),
        "{text}"
    );
    assert!(text.contains("val: 16 images from 16 files"), "{text}");
    let text = succeeds(alexnet().args(["prepare", "--verify"]).arg(&set));
    assert!(
        text.contains("48 training and 16 validation images at 37x37, every checksum holds"),
        "{text}"
    );

    let run = root.join("run");
    let text = succeeds(
        alexnet()
            .args(["train", "--device", "cpu", "--epochs", "1", "--batch", "16"])
            .args(["--log-every", "1", "--data"])
            .arg(&set)
            .arg("--checkpoint")
            .arg(&run),
    );
    assert!(
        text.contains("(prepared): 48 images, 2 classes (disk, square)"),
        "{text}"
    );
    assert!(text.contains("validation: 16 images"), "{text}");
    assert!(text.contains("epoch 1 step      3: loss"), "{text}");
    assert!(text.contains("epoch 1 done"), "{text}");
    // eval finds the prepared set from the run.
    let text = succeeds(
        alexnet()
            .args(["eval", "--device", "cpu", "--checkpoint"])
            .arg(&run),
    );
    assert!(
        text.contains(": 16 images, centre crop and ten crops"),
        "{text}"
    );

    // A network whose input needs another size: the error says how to prepare it.
    let err = fails(
        alexnet()
            .args(["train", "--device", "cpu", "--net", "alexnet", "--data"])
            .arg(&set)
            .arg("--checkpoint")
            .arg(root.join("run2")),
    );
    assert!(
        err.contains("prepared at 37x37") && err.contains("--size 256"),
        "{err}"
    );
    // Not a prepared set, not an image folder.
    let err = fails(
        alexnet()
            .args(["prepare", "--verify"])
            .arg(root.join("src")),
    );
    assert!(err.contains("not a prepared data set"), "{err}");
}

/// A disk that fills during `prepare`: the error names the shard and the cause, and
/// nothing that looks complete is left (no index, no partial shard).
#[test]
fn a_full_disk_during_prepare_leaves_no_set_that_looks_complete() {
    let root = tmp().join("prepare-full");
    let _ = std::fs::remove_dir_all(&root);
    image_folder(&root.join("src"), 24, 0);
    // Room for about two of the four shards (12 images of 37x37x3 bytes each).
    let fs = root.join("tmpfs");
    let Some(_mount) = Tmpfs::mount(
        &fs,
        2 * 12 * 37 * 37 * 3 / 1024 + 8,
        "a_full_disk_during_prepare_leaves_no_set_that_looks_complete",
    ) else {
        return;
    };
    let set = fs.join("set");
    let err = fails(
        alexnet()
            .args(["prepare", "--size", "37", "--shard-images", "12", "--data"])
            .arg(root.join("src"))
            .arg("--out")
            .arg(&set),
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(".shard"), "names the shard: {err}");
    let names: Vec<String> = std::fs::read_dir(&set)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("tmp") || n == "index.json"),
        "{names:?}"
    );
    let err = fails(alexnet().args(["prepare", "--verify"]).arg(&set));
    assert!(err.contains("not a prepared data set"), "{err}");
    // The shards written before the disk filled are not taken for an image folder.
    assert!(names.iter().any(|n| n.ends_with(".shard")), "{names:?}");
    let err = fails(
        alexnet()
            .args(["train", "--device", "cpu", "--data"])
            .arg(&set)
            .arg("--checkpoint")
            .arg(root.join("run")),
    );
    assert!(
        err.contains("not a prepared data set") && err.contains("alexnet prepare"),
        "{err}"
    );
}
