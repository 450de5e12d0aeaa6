//! Weights: the paper's initialisation, safetensors round trips, and the errors a wrong
//! file gets.

use std::collections::HashMap;

use alexnet::nets::{AlexNet, SmallNet};
use alexnet::runtime::weights::{paper_init, read_safetensors, write_safetensors, NamedTensor};
use alexnet::runtime::{Batch, Cpu, Error, Model};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("alexnet-weights-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("w.safetensors")
}

#[test]
fn paper_initialisation() {
    let t = paper_init(AlexNet::plan(), 7);
    let by: HashMap<_, _> = t.iter().map(|t| (t.name.as_str(), t)).collect();
    assert_eq!(t.iter().map(|t| t.data.len()).sum::<usize>(), 60_965_224);
    assert_eq!(by["conv2.weight"].shape, vec![256, 48, 5, 5]);
    assert_eq!(by["fc6.weight"].shape, vec![4096, 9216]);
    for (layer, bias) in [
        ("conv1", 0.0),
        ("conv2", 1.0),
        ("conv3", 0.0),
        ("conv4", 1.0),
        ("conv5", 1.0),
        ("fc6", 1.0),
        ("fc7", 1.0),
        ("fc8", 0.0),
    ] {
        assert!(
            by[format!("{layer}.bias").as_str()]
                .data
                .iter()
                .all(|&b| b == bias),
            "{layer}.bias should be {bias}"
        );
    }
    let w = &by["fc6.weight"].data;
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(
        mean.abs() < 1e-4 && (std - 0.01).abs() < 1e-4,
        "N(0, 0.01): mean {mean}, std {std}"
    );
    assert_eq!(
        paper_init(AlexNet::plan(), 7),
        t,
        "deterministic for a seed"
    );
    assert_ne!(paper_init(AlexNet::plan(), 8)[0], t[0], "the seed matters");
}

#[test]
fn save_load_round_trip_gives_the_same_outputs() {
    let path = tmp("roundtrip");
    let net = SmallNet::new(Cpu::new(), 3).unwrap();
    net.save(&path).unwrap();
    let back = SmallNet::load(Cpu::new(), &path).unwrap();
    let x = Batch::<3, 32, 32>::from_vec(
        2,
        (0..2 * 3 * 32 * 32)
            .map(|i| (i % 17) as f32 / 17.0)
            .collect(),
    )
    .unwrap();
    assert_eq!(net.forward(&x).unwrap(), back.forward(&x).unwrap());
    // Written atomically: nothing but the file is left in its folder.
    let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("w.safetensors")]);
}

#[test]
fn wrong_files_are_errors_that_name_the_tensor() {
    let path = tmp("wrong");
    let mut t = paper_init(SmallNet::plan(), 1);
    t.retain(|t| t.name != "conv2.bias");
    let fc = t.iter_mut().find(|t| t.name == "fc4.weight").unwrap();
    fc.shape = vec![64, 100];
    fc.data.truncate(64 * 100);
    t.push(NamedTensor {
        name: "conv9.weight".into(),
        shape: vec![1],
        data: vec![0.0],
    });
    write_safetensors(&path, &t, None).unwrap();
    let err = SmallNet::load(Cpu::new(), &path).unwrap_err();
    assert!(matches!(err, Error::Weights { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("missing tensor `conv2.bias` of shape [32]"),
        "{msg}"
    );
    assert!(
        msg.contains("tensor `fc4.weight` has shape [64, 100], the network needs [64, 288]"),
        "{msg}"
    );
    assert!(msg.contains("unexpected tensor `conv9.weight`"), "{msg}");

    // Another network's checkpoint.
    let alex = tmp("other");
    write_safetensors(&alex, &paper_init(SmallNet::plan(), 1)[..2], None).unwrap();
    assert!(AlexNet::load(Cpu::new(), &alex)
        .unwrap_err()
        .to_string()
        .contains("conv1.weight` has shape [16, 3, 5, 5], the network needs [96, 3, 11, 11]"));

    // Not a safetensors file at all, and a missing file.
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    assert!(matches!(
        SmallNet::load(Cpu::new(), &path).unwrap_err(),
        Error::Format { .. }
    ));
    assert!(matches!(
        SmallNet::load(Cpu::new(), path.with_extension("nope")).unwrap_err(),
        Error::Io { .. }
    ));
}

#[test]
fn half_precision_files_are_converted() {
    let path = tmp("f16");
    let t = paper_init(SmallNet::plan(), 2);
    let views: Vec<(String, Vec<u8>, Vec<usize>)> = t
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.data
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views: Vec<_> = views
        .iter()
        .map(|(n, d, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let back = read_safetensors(&path).unwrap();
    let w = back.iter().find(|t| t.name == "conv1.weight").unwrap();
    let orig = t.iter().find(|t| t.name == "conv1.weight").unwrap();
    assert!(w
        .data
        .iter()
        .zip(&orig.data)
        .all(|(a, b)| (a - b).abs() <= b.abs() * 1e-3 + 1e-7));
    assert!(Model::load(Cpu::new(), SmallNet::plan().clone(), &path).is_ok());
}

#[test]
fn wrong_input_shape_is_an_error() {
    let model = Model::init(Cpu::new(), SmallNet::plan().clone(), 0).unwrap();
    let err = model
        .forward(&alexnet::runtime::Tensor::zeros(vec![2, 3, 31, 32]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "input of `SmallNet`: expected shape [2, 3, 32, 32], found [2, 3, 31, 32]"
    );
}

#[test]
fn metadata_is_read_from_the_header_alone() {
    use alexnet::runtime::weights::{parse_metadata, read_metadata};
    let path = tmp("meta.safetensors");
    let meta = HashMap::from([
        ("format".to_string(), "x/1".to_string()),
        ("note.data".to_string(), "folder:/a b/c".to_string()),
    ]);
    let t = NamedTensor {
        name: "w".into(),
        shape: vec![4, 1000],
        data: vec![0.5; 4000],
    };
    write_safetensors(&path, std::slice::from_ref(&t), Some(meta.clone())).unwrap();
    assert_eq!(read_metadata(&path).unwrap(), meta);
    assert_eq!(
        parse_metadata(&std::fs::read(&path).unwrap()).unwrap(),
        meta
    );
    write_safetensors(&path, &[t], None).unwrap();
    assert!(read_metadata(&path).unwrap().is_empty());
    std::fs::write(&path, b"short").unwrap();
    assert!(read_metadata(&path).is_err());
    // Headers that are not safetensors headers: not JSON, metadata that is not strings.
    for header in [&b"{not json"[..], br#"{"__metadata__": {"a": 1}}"#] {
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        std::fs::write(&path, &file).unwrap();
        let err = read_metadata(&path).unwrap_err().to_string();
        assert!(err.contains("not a safetensors header"), "{err}");
    }
    let _ = std::fs::remove_file(&path);
}
