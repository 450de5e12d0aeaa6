//! The packed GEMM against its definition: every kernel, operand form and thread count
//! with the same bits.

use super::layout::{gather_panel, pack_b, pack_panel};
use super::*;

/// A row-major `k x n` matrix as a [`Gather`] (its index vectors leaked: a test).
fn matrix(b: &[f32], k: usize, n: usize) -> Gather<'_> {
    let rows: Vec<u32> = (0..k as u32).map(|r| r * n as u32).collect();
    let cols: Vec<u32> = (0..n as u32).collect();
    Gather {
        src: b,
        rows: rows.leak(),
        cols: cols.leak(),
        paired: None,
    }
}

/// Whether every output has the bits of the first.
fn same_bits(outs: &[Vec<f32>]) -> bool {
    outs.iter().all(|o| {
        o.iter()
            .zip(&outs[0])
            .all(|(x, y)| x.to_bits() == y.to_bits())
    })
}

fn data(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as f32 + 0.5) * 0.618_034 + seed as f32 * 0.37).sin() * 1.7)
        .collect()
}

/// The product of the operands as `arith` rounds them, in f64.
fn reference(arith: Arith, a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| arith.operand(a[i * k + p]) as f64 * arith.operand(b[p * n + j]) as f64)
                .sum();
        }
    }
    c
}

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(bf16_bits(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (down).
    assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
    // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (up).
    assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
    assert_eq!(bf16_bits(-2.5), 0xc020);
    assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
    assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    assert_eq!(bf16_bits(f32::MAX), 0x7f80, "rounds up to infinity");
}

#[test]
fn every_kernel_computes_the_product_of_its_operands() {
    // Ragged everywhere: rows not a multiple of MR, columns of NR, an odd K, and more
    // than one block of K.
    let shapes = [
        (13, 101, 301),
        (1, 7, 1),
        (8, 48, 2),
        (3, 50, 257),
        (9, 5, 300),
    ];
    for arith in [Arith::F32, Arith::Bf16] {
        for &(m, n, k) in &shapes {
            let (a, b) = (data(m * k, 1), data(k * n, 2));
            let mut pa = vec![0.0; arith.a_len(m, k)];
            pack_a(arith, &a, m, k, k, &mut pa);
            let mut pb = vec![0; arith.b_len(k, n)];
            pack_b(arith, matrix(&b, k, n), &mut pb, 2);
            // Packed, and read in place (A's rows in f32, B gathered block by block),
            // with a leading dimension longer than K.
            let lda = k + 2;
            let mut a_wide = vec![f32::NAN; (m - 1) * lda + k];
            for i in 0..m {
                a_wide[i * lda..i * lda + k].copy_from_slice(&a[i * k..(i + 1) * k]);
            }
            let a_rows = AOperand::Rows {
                data: &a_wide,
                ld: lda,
            };
            let pairs = pack_pairs(&a_wide, m, k, lda);
            // B gathered from its transpose (`n x k`): the rows of a step are neighbours,
            // as a convolution's taps along a filter row are (two at a time in f32, and
            // in bf16 from the source's pairs).
            let bt: Vec<f32> = (0..n * k).map(|i| b[i % k * n + i / k]).collect();
            let bt_pairs = pair_neighbours(&bt);
            let rows: Vec<u32> = (0..k as u32).collect();
            let cols: Vec<u32> = (0..n).map(|j| (j * k) as u32).collect();
            let transposed = Gather {
                src: &bt,
                rows: &rows,
                cols: &cols,
                paired: (arith == Arith::Bf16).then_some(&bt_pairs[..]),
            };
            let mut forms = vec![
                (AOperand::Packed(&pa), BOperand::Packed(&pb)),
                (AOperand::Packed(&pa), BOperand::Gather(matrix(&b, k, n))),
                (a_rows, BOperand::Gather(matrix(&b, k, n))),
                (a_rows, BOperand::Packed(&pb)),
                (AOperand::Packed(&pa), BOperand::Gather(transposed)),
            ];
            if arith == Arith::Bf16 {
                // Pairs of A: only for the dot products (skipped below for the others).
                forms.push((AOperand::Pairs(&pairs), BOperand::Packed(&pb)));
                forms.push((AOperand::Pairs(&pairs), BOperand::Gather(matrix(&b, k, n))));
                forms.push((AOperand::Pairs(&pairs), BOperand::Gather(transposed)));
            }
            let want = reference(arith, &a, &b, (m, n, k));
            let bias = data(m, 3);
            // Every kernel gives the same bits: `vdpbf16ps` rounds its two products into
            // each lane one after the other, odd then even, as the FMA kernels do (with
            // normal values: it flushes subnormals, which these data do not make).
            let mut outs = Vec::new();
            for kernel in [Kernel::Portable, Kernel::Avx512, Kernel::Avx512Bf16] {
                if !kernel.available() {
                    eprintln!("{} not on this CPU", kernel.name());
                    continue;
                }
                for (threads, &(a, b)) in [1, 2]
                    .into_iter()
                    .flat_map(|t| forms.iter().map(move |f| (t, f)))
                    .filter(|(_, (a, _))| kernel.dots() || !matches!(a, AOperand::Pairs(_)))
                {
                    let ops = Operands {
                        arith,
                        a,
                        b,
                        m,
                        n,
                        k,
                    };
                    let ldc = n + 3;
                    let mut c = vec![f32::NAN; (m - 1) * ldc + n];
                    gemm(kernel, ops, &mut c, ldc, Epilogue::default(), threads);
                    let (mut num, mut den) = (0.0, 0.0);
                    for i in 0..m {
                        for j in 0..n {
                            let d = c[i * ldc + j] as f64 - want[i * n + j];
                            num += d * d;
                            den += want[i * n + j] * want[i * n + j];
                        }
                    }
                    let rel = (num / den).sqrt();
                    assert!(rel < 5e-6, "{arith:?} {kernel:?} {m}x{n}x{k}: {rel}");
                    // The epilogue: bias per row, then ReLU.
                    let ep = Epilogue {
                        bias: Some(&bias),
                        relu: true,
                    };
                    let mut d = vec![f32::NAN; (m - 1) * ldc + n];
                    gemm(kernel, ops, &mut d, ldc, ep, threads);
                    for i in 0..m {
                        for j in 0..n {
                            let want = (c[i * ldc + j] + bias[i]).max(0.0);
                            assert_eq!(d[i * ldc + j], want);
                        }
                    }
                    outs.push(c);
                }
            }
            assert!(
                same_bits(&outs),
                "{arith:?} {m}x{n}x{k}: kernels, operand forms or threads differ in bits"
            );
        }
    }
}

/// Products run from inside a parallel loop (rayon may run one on a thread whose
/// scratch buffer another is using): the same bits as alone.
#[test]
fn nested_products_give_the_same_bits() {
    let (m, n, k) = (20, 150, 70);
    let (a, b) = (data(m * k, 8), data(k * n, 9));
    let ops = Operands {
        arith: Arith::F32,
        a: AOperand::Rows { data: &a, ld: k },
        b: BOperand::Gather(matrix(&b, k, n)),
        m,
        n,
        k,
    };
    let run = || {
        let mut c = vec![f32::NAN; m * n];
        gemm(Kernel::best(), ops, &mut c, n, Epilogue::default(), 2);
        c
    };
    let alone = run();
    let nested: Vec<Vec<f32>> = (0..8).into_par_iter().map(|_| run()).collect();
    assert!(nested
        .iter()
        .all(|c| same_bits(&[alone.clone(), c.clone()])));
}

/// The AVX-512 gather (f32) and the packing (f32, and bf16 against the scalar rounding of
/// each pair of rows) give the words they should on every kind of value (NaNs of both
/// signs, quiet and signalling, infinities, zeros, subnormals, the largest finite values,
/// bf16 ties), with an odd K.
#[test]
fn the_gather_packs_special_values_as_the_portable_packing_does() {
    if !Kernel::Avx512.available() {
        eprintln!("AVX-512F not on this CPU");
        return;
    }
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffa0_0000),
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(0x007f_ffff),
        f32::MAX,
        f32::MIN,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f80_7fff),
    ];
    let (k, n) = (7, 53);
    let src: Vec<f32> = (0..k * n).map(|i| specials[(i * 5 + i / 7) % 16]).collect();
    let g = matrix(&src, k, n);
    for pi in 0..n.div_ceil(NR) {
        let words = k * NR;
        let (mut fast, mut slow) = (vec![7u32; words], vec![9u32; words]);
        gather_panel(Kernel::Avx512, Arith::F32, g, pi, &mut fast);
        pack_panel(Arith::F32, g, pi, &mut slow);
        assert_eq!(fast, slow, "F32 panel {pi}");
        // bf16: the even row in the low half, the odd one (none past K) in the high half,
        // packed and gathered.
        let mut packed = vec![9u32; Arith::Bf16.steps(k) * NR];
        pack_panel(Arith::Bf16, g, pi, &mut packed);
        let mut gathered = vec![7u32; Arith::Bf16.steps(k) * NR];
        gather_panel(Kernel::Avx512, Arith::Bf16, g, pi, &mut gathered);
        assert_eq!(gathered, packed, "Bf16 gathered panel {pi}");
        let want: Vec<u32> = (0..Arith::Bf16.steps(k) * NR)
            .map(|i| {
                let (s, j) = (i / NR, pi * NR + i % NR);
                let at = |r: usize| {
                    if r < k && j < n {
                        bf16_bits(src[r * n + j])
                    } else {
                        0
                    }
                };
                at(2 * s) | at(2 * s + 1) << 16
            })
            .collect();
        assert_eq!(packed, want, "Bf16 panel {pi}");
    }
}

#[test]
fn the_narrow_product_matches_the_definition_with_the_same_bits_everywhere() {
    for &(m, n, k) in &[(29, 16, 301), (12, 5, 64), (1, 1, 3), (40, 9, 1000)] {
        let lda = k + 5;
        let a = data(m * lda, 6);
        let x = data(n * k, 7);
        let b = pack_narrow(&x, n, k);
        let mut outs = Vec::new();
        for kernel in [Kernel::Portable, Kernel::Avx512, Kernel::Avx512Bf16] {
            if !kernel.available() {
                continue;
            }
            for threads in [1, 2] {
                let mut c = vec![f32::NAN; m * NARROW];
                gemm_narrow(kernel, &a, (m, k, lda), &b, &mut c, threads);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| a[i * lda + p] as f64 * x[j * k + p] as f64)
                            .sum();
                        let got = c[i * NARROW + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{got} {want}"
                        );
                    }
                    assert!(c[i * NARROW + n..(i + 1) * NARROW]
                        .iter()
                        .all(|&v| v == 0.0));
                }
                outs.push(c);
            }
        }
        assert!(
            same_bits(&outs),
            "{m}x{n}x{k}: kernels or threads differ in bits"
        );
    }
}

#[test]
fn transposed_packing_is_the_transpose() {
    for arith in [Arith::F32, Arith::Bf16] {
        let (n, k) = (53, 9);
        let w = data(n * k, 4);
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let mut pb = vec![0; arith.b_len(k, n)];
        pack_b(arith, matrix(&wt, k, n), &mut pb, 1);
        assert_eq!(pack_b_transposed(arith, &w, k, n, k), pb, "{arith:?}");
    }
}

/// A convolution's gather (whose taps along a filter row are neighbours: gathered two at
/// a time in f32, and in bf16 from the source's neighbours paired) packs the words of the
/// plain packing, in f32 and bf16, for odd and even filter widths, strides and a ragged
/// last panel; the source unrounded, so that the pairs' rounding is checked too.
#[test]
fn a_paired_gather_packs_what_the_packing_does() {
    for (k, stride, (hp, wp)) in [
        (3usize, 1usize, (9usize, 11usize)),
        (4, 2, (12, 13)),
        (11, 4, (23, 27)),
    ] {
        let c = 3;
        let src = data(c * hp * wp, 5);
        let paired = pair_neighbours(&src);
        let taps: Vec<u32> = (0..c * k * k)
            .map(|r| (((r / (k * k)) * hp + r / k % k) * wp + r % k) as u32)
            .collect();
        let (p, q) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
        let corners: Vec<u32> = (0..p * q)
            .map(|n| ((n / q * stride) * wp + n % q * stride) as u32)
            .collect();
        let plain = Gather {
            src: &src,
            rows: &taps,
            cols: &corners,
            paired: None,
        };
        let with_pairs = Gather {
            paired: Some(&paired),
            ..plain
        };
        for arith in [Arith::F32, Arith::Bf16] {
            let words = arith.steps(taps.len()) * NR;
            for pi in 0..corners.len().div_ceil(NR) {
                let mut want = vec![7u32; words];
                pack_panel(arith, plain, pi, &mut want);
                for kernel in [Kernel::Avx512, Kernel::Avx512Bf16] {
                    if kernel.available() {
                        let mut got = vec![9u32; words];
                        gather_panel(kernel, arith, with_pairs, pi, &mut got);
                        let at = format!("{arith:?} {kernel:?} k {k} stride {stride} panel {pi}");
                        assert_eq!(got, want, "{at}");
                    }
                }
            }
        }
    }
}
