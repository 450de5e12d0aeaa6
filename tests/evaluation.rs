//! Ten-crop evaluation against a hand computation: a one-layer classifier whose logits
//! are weighted sums of the patch's pixels, so that each patch's prediction can be written
//! out from the image directly, without the library's cropping or flipping code.

use alexnet::runtime::data::pipeline::Preprocess;
use alexnet::runtime::eval::{average_crops, Evaluation};
use alexnet::runtime::weights::NamedTensor;
use alexnet::runtime::{Cpu, Model, Tensor};

alexnet::network! {
    /// Three classes from a 3x2x3 patch: logits are linear in the pixels.
    Probe<3, 2, 3> {
        fc(3) softmax
    }
}

/// Side 4 images, 2x3 patches: corners at rows {0, 2} and columns {0, 1}; the centre at
/// row 1, column 0 (offsets rounded down).
const SIDE: usize = 4;
const PATCHES: [(usize, usize); 5] = [(0, 0), (0, 1), (2, 0), (2, 1), (1, 0)];

fn weight(k: usize, c: usize, y: usize, x: usize) -> f32 {
    // Position-dependent so that corners, the centre and mirror images all differ.
    let v = ((k * 7 + c * 5 + y * 3 + x * 11) % 13) as f32 - 6.0;
    v * 0.01
}

#[test]
fn ten_crop_probabilities_are_the_mean_of_the_hand_computed_softmaxes() {
    let images: Vec<Vec<f32>> = (0..2)
        .map(|n| {
            (0..3 * SIDE * SIDE)
                .map(|i| ((i * 37 + n * 101) % 256) as f32)
                .collect()
        })
        .collect();
    let mean: Vec<f32> = (0..3 * SIDE * SIDE)
        .map(|i| (i % 9) as f32 * 10.0)
        .collect();
    let pre = Preprocess {
        side: SIDE,
        crop: (2, 3),
        mean: mean.clone(),
        scale: 0.5,
        std: [1.0; 3],
        pca: None,
        classes: vec!["a".into(), "b".into(), "c".into()],
        source: "test".into(),
    };
    let w: Vec<f32> = (0..3)
        .flat_map(|k| {
            (0..3).flat_map(move |c| {
                (0..2).flat_map(move |y| (0..3).map(move |x| weight(k, c, y, x)))
            })
        })
        .collect();
    let bias = vec![0.1, -0.2, 0.05];
    let model = Model::from_tensors(
        Cpu::new(),
        Probe::plan().clone(),
        vec![
            NamedTensor {
                name: "fc1.weight".into(),
                shape: vec![3, 18],
                data: w,
            },
            NamedTensor {
                name: "fc1.bias".into(),
                shape: vec![3],
                data: bias.clone(),
            },
        ],
    )
    .unwrap();

    // The library's way: the ten-crop transform, one forward pass, the average.
    let t = pre.ten_crop_transform();
    let x: Vec<f32> = images.iter().flat_map(|img| t(img.clone(), 0)).collect();
    let probs = model
        .forward(&Tensor::new(vec![20, 3, 2, 3], x).unwrap())
        .unwrap();
    let got = average_crops(probs.data(), 10, 3).unwrap();

    // By hand: for each patch (offset, mirrored or not), logit k is
    // bias_k + sum w_k(c, y, x) * scale * (img - mean)(c, oy + y, ox + x'),
    // x' = x, or 2 - x for a mirror image; softmax; mean over the ten.
    for (n, img) in images.iter().enumerate() {
        let mut avg = [0.0f64; 3];
        for mirror in [false, true] {
            for &(oy, ox) in &PATCHES {
                let logits: Vec<f64> = (0..3)
                    .map(|k| {
                        let mut s = f64::from(bias[k]);
                        for c in 0..3 {
                            for y in 0..2 {
                                for x in 0..3 {
                                    let sx = ox + if mirror { 2 - x } else { x };
                                    let i = (c * SIDE + oy + y) * SIDE + sx;
                                    s += f64::from(weight(k, c, y, x))
                                        * 0.5
                                        * f64::from(img[i] - mean[i]);
                                }
                            }
                        }
                        s
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                for k in 0..3 {
                    avg[k] += (logits[k] - m).exp() / z / 10.0;
                }
            }
        }
        for k in 0..3 {
            let g = f64::from(got[n * 3 + k]);
            assert!(
                (g - avg[k]).abs() < 1e-5,
                "image {n} class {k}: {g} vs {}",
                avg[k]
            );
        }
        // The patches really differ: the average is not just the centre's prediction.
        let centre = &probs.data()[(n * 10 + 4) * 3..(n * 10 + 5) * 3];
        assert!(
            (0..3).any(|k| (f64::from(centre[k]) - avg[k]).abs() > 1e-3),
            "{centre:?} vs {avg:?}"
        );
    }

    // Scoring the averaged predictions: labels chosen as the hand-computed argmax of image
    // 0 and a class that is not image 1's argmax.
    let argmax = |p: &[f32]| (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
    let (l0, l1) = (argmax(&got[..3]), (argmax(&got[3..]) + 1) % 3);
    let mut e = Evaluation::new(3);
    e.add(&got, &[l0 as u32, l1 as u32]).unwrap();
    assert_eq!(e.top1_error(), 0.5);
    let want = -(f64::from(got[l0]).ln() + f64::from(got[3 + l1]).ln()) / 2.0;
    assert!((e.loss() - want).abs() < 1e-9, "{} vs {want}", e.loss());
    assert_eq!(e.confusion(l0, l0), 1);
    assert_eq!(e.confusion(l1, argmax(&got[3..])), 1);
}
