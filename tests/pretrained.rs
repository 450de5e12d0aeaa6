//! The pretrained path (README, "A pretrained ImageNet AlexNet") against torchvision itself:
//! tests/fixtures/pretrained.safetensors, written by scripts/make_imagenet_fixture.py, holds
//! what torchvision 0.20.1 makes of three photographs (tests/fixtures/photos) with hashed
//! random weights converted by scripts/convert_torchvision.py: its preprocessed 8-bit
//! patches, its logits, and sums of the converted tensors. The Rust side regenerates the
//! same weights from the hash.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use alexnet::nets::TorchvisionAlexNet;
use alexnet::runtime::data::imagenet;
use alexnet::runtime::data::pipeline::{Preprocess, IMAGENET_MEAN, IMAGENET_STD};
use alexnet::runtime::weights::{write_safetensors, NamedTensor};
use alexnet::runtime::{Cpu, Model, Tensor};
use common::{hash_weights, rel_l2, sketch};

struct Fixture {
    meta: HashMap<String, String>,
    u8s: HashMap<String, Vec<u8>>,
    floats: HashMap<String, Vec<f64>>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Fixture {
    let path = root().join("tests/fixtures/pretrained.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().expect("fixture metadata");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut u8s, mut floats) = (HashMap::new(), HashMap::new());
    for (name, view) in st.tensors() {
        match view.dtype() {
            safetensors::Dtype::U8 => {
                u8s.insert(name, view.data().to_vec());
            }
            safetensors::Dtype::F64 => {
                let v = view.data().chunks_exact(8);
                floats.insert(
                    name,
                    v.map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                );
            }
            safetensors::Dtype::F32 => {
                let v = view.data().chunks_exact(4);
                let v = v.map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64);
                floats.insert(name, v.collect());
            }
            other => panic!("{name}: dtype {other:?}"),
        }
    }
    Fixture { meta, u8s, floats }
}

impl Fixture {
    fn seed(&self) -> u64 {
        self.meta["weight_seed"].parse().unwrap()
    }

    fn photos(&self) -> Vec<String> {
        self.meta["photos"].split(',').map(str::to_string).collect()
    }

    /// torchvision's input for a photo: ToTensor (bytes / 255), then Normalize, in f32.
    fn input(&self, photo: &str) -> Vec<f32> {
        let px = &self.u8s[&format!("{photo}.pixels")];
        let plane = px.len() / 3;
        px.iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = i / plane;
                (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
            })
            .collect()
    }
}

fn model() -> (Fixture, Model<Cpu>) {
    let fx = fixture();
    let plan = TorchvisionAlexNet::plan();
    let model =
        Model::from_tensors(Cpu::new(), plan.clone(), hash_weights(plan, fx.seed())).unwrap();
    (fx, model)
}

#[test]
fn the_converted_torchvision_weights_are_the_hashed_ones() {
    let fx = fixture();
    let plan = TorchvisionAlexNet::plan();
    let ours = hash_weights(plan, fx.seed());
    assert_eq!(ours.len(), 16);
    for t in &ours {
        let want = &fx.floats[&format!("weights.{}.sketch", t.name)];
        let err = rel_l2(
            &sketch(&t.data)
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
            want,
        );
        assert!(
            err < 1e-6,
            "{}: the converted tensor differs ({err:.2e})",
            t.name
        );
    }
    // Sums of another seed's weights do not match: the check can fail.
    let other = hash_weights(plan, fx.seed() + 1);
    let want = &fx.floats["weights.fc8.weight.sketch"];
    let t = other.iter().find(|t| t.name == "fc8.weight").unwrap();
    assert!(
        rel_l2(
            &sketch(&t.data)
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
            want
        ) > 0.1
    );
}

#[test]
fn logits_match_torchvision_on_its_own_preprocessing() {
    let (fx, model) = model();
    let photos = fx.photos();
    assert_eq!(photos.len(), 3);
    let x: Vec<f32> = photos.iter().flat_map(|p| fx.input(p)).collect();
    let y = model
        .forward(&Tensor::new(vec![3, 3, 224, 224], x).unwrap())
        .unwrap();
    let want = &fx.floats["logits"];
    let err = rel_l2(y.data(), want);
    println!("logits against torchvision 0.20.1: relative L2 {err:.2e}");
    assert!(err <= 1e-4, "logits differ from torchvision's: {err:.2e}");
}

/// The project's torchvision preset on the photographs against torchvision's transforms:
/// the resampling filters differ (the `image` crate's triangle filter, Pillow's bilinear
/// one), so the inputs agree to about 1% relative L2 (a third of an 8-bit level on
/// average) rather than exactly; the logits of the two inputs agree to about 1%. (With the
/// longer side rounded instead of truncated as torchvision does, the landscape photo was
/// 14% off.)
#[test]
fn the_torchvision_preset_prepares_photos_as_torchvision_does() {
    let (fx, model) = model();
    let pre = Preprocess::torchvision(TorchvisionAlexNet::plan().input).unwrap();
    let transform = pre.eval_transform();
    let want_logits = &fx.floats["logits"];
    for (i, photo) in fx.photos().iter().enumerate() {
        let path = root().join(format!("tests/fixtures/photos/{photo}.jpg"));
        let ours = transform(pre.load_file(&path).unwrap(), 0);
        let theirs = fx.input(photo);
        let err = rel_l2(&ours, &theirs.iter().map(|&v| v as f64).collect::<Vec<_>>());
        // In 8-bit levels: the mean absolute difference of the unnormalised pixels.
        let levels = ours
            .iter()
            .zip(&theirs)
            .enumerate()
            .map(|(k, (a, b))| ((a - b) * IMAGENET_STD[k / (224 * 224)] * 255.0).abs() as f64)
            .sum::<f64>()
            / ours.len() as f64;
        let y = model
            .forward(&Tensor::new(vec![1, 3, 224, 224], ours).unwrap())
            .unwrap();
        let logit_err = rel_l2(y.data(), &want_logits[i * 1000..(i + 1) * 1000]);
        println!("{photo}: input relative L2 {err:.3e}, mean |difference| {levels:.2} levels of 255, logits {logit_err:.3e}");
        assert!(err < 0.02, "{photo}: input relative L2 {err:.3e}");
        assert!(levels < 1.0, "{photo}: {levels:.2} levels");
        assert!(logit_err < 0.01, "{photo}: logits {logit_err:.3e}");
    }
}

#[test]
fn classify_names_imagenet_classes_for_converted_weights() {
    let fx = fixture();
    let plan = TorchvisionAlexNet::plan();
    let dir = std::env::temp_dir().join(format!("alexnet-pretrained-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("alexnet-torchvision.safetensors");
    // What scripts/convert_torchvision.py writes: the tensors and the network's name.
    let tensors: Vec<NamedTensor> = hash_weights(plan, fx.seed());
    let meta = HashMap::from([("network".to_string(), "TorchvisionAlexNet".to_string())]);
    write_safetensors(&weights, &tensors, Some(meta)).unwrap();
    let photos: Vec<PathBuf> = fx
        .photos()
        .iter()
        .map(|p| root().join(format!("tests/fixtures/photos/{p}.jpg")))
        .collect();
    let mut args: Vec<String> = ["alexnet", "classify", "--device", "cpu", "--weights"]
        .map(String::from)
        .to_vec();
    args.push(weights.display().to_string());
    args.extend(photos.iter().map(|p| p.display().to_string()));
    let mut out = Vec::new();
    alexnet_cli::run(args, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    println!("{out}");
    // The expected top 5, from the preset and the model directly.
    let names = imagenet::class_names();
    let pre = Preprocess::torchvision(plan.input).unwrap();
    let model = Model::from_tensors(Cpu::new(), plan.clone(), tensors).unwrap();
    let blocks: Vec<&str> = out.split(".jpg:\n").skip(1).collect();
    assert_eq!(blocks.len(), 3, "{out}");
    for (photo, block) in photos.iter().zip(blocks) {
        let x = pre.eval_transform()(pre.load_file(photo).unwrap(), 0);
        let y = model
            .forward(&Tensor::new(vec![1, 3, 224, 224], x).unwrap())
            .unwrap();
        let mut order: Vec<usize> = (0..1000).collect();
        order.sort_by(|&a, &b| y.data()[b].total_cmp(&y.data()[a]));
        let lines: Vec<&str> = block.lines().take(5).collect();
        for (rank, (&c, line)) in order.iter().zip(&lines).enumerate() {
            let want = format!("{}. {}", rank + 1, names[c]);
            assert!(
                line.trim_start().starts_with(&want),
                "{line:?}, expected {want:?}"
            );
            assert!(line.trim_end().ends_with('%'), "{line:?}");
        }
    }
    // A folder or a missing file for --weights says what to do.
    for (path, hint) in [
        (dir.clone(), "--checkpoint"),
        (dir.join("nope.safetensors"), "convert_torchvision.py"),
    ] {
        let err = alexnet_cli::run(
            ["alexnet", "classify", "--weights"]
                .map(String::from)
                .into_iter()
                .chain([path.display().to_string(), photos[0].display().to_string()]),
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(hint), "{err}");
    }
    // The small net has no ImageNet preset.
    let small = dir.join("small.safetensors");
    alexnet::nets::SmallNet::new(Cpu::new(), 1)
        .unwrap()
        .save(&small)
        .unwrap();
    let err = alexnet_cli::run(
        ["alexnet", "classify", "--net", "small", "--weights"]
            .map(String::from)
            .into_iter()
            .chain([small.display().to_string(), photos[0].display().to_string()]),
        &mut Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no preprocessing preset"), "{err}");
    // --preprocess needs --weights.
    let err = alexnet_cli::run(
        [
            "alexnet",
            "classify",
            "--preprocess",
            "torchvision",
            "x.jpg",
        ],
        &mut Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--weights"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
