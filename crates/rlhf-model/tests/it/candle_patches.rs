//! The changes rlhf makes to candle-core (`vendor/candle-core/PATCHES.md`) checked from the
//! outside: each must give what unpatched candle gives.

use candle_core::{Device, IndexOp, Tensor};

/// Row-major values of `t`, read one element at a time through `i` (no copy path involved).
fn by_index(t: &Tensor) -> Vec<u32> {
    let dims = t.dims().to_vec();
    let mut out = Vec::new();
    let mut idx = vec![0usize; dims.len()];
    for _ in 0..t.elem_count() {
        let mut e = t.clone();
        for &i in &idx {
            e = e.i(i).unwrap();
        }
        out.push(e.to_scalar::<u32>().unwrap());
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Transposed matrices (the layout of a `t()` view, alone or batched, at an offset) are made
/// contiguous by tiles; every element must land where the strided copy puts it.
#[test]
fn contiguous_copies_of_transposed_matrices_put_every_element_in_place() {
    let dev = Device::Cpu;
    for (batch, rows, cols) in [(1, 2, 2), (1, 17, 33), (1, 64, 16), (3, 5, 40), (2, 31, 18)] {
        let n = batch * rows * cols;
        let t = Tensor::arange(0u32, n as u32 + 7, &dev).unwrap().narrow(0, 7, n).unwrap();
        let stored = t.reshape((batch, cols, rows)).unwrap();
        let view = stored.transpose(1, 2).unwrap();
        assert!(!view.is_contiguous());
        let copied = view.contiguous().unwrap();
        assert_eq!(copied.flatten_all().unwrap().to_vec1::<u32>().unwrap(), by_index(&view), "{batch}×{rows}×{cols}");
        if batch == 1 {
            let two_d = view.squeeze(0).unwrap().contiguous().unwrap();
            assert_eq!(two_d.flatten_all().unwrap().to_vec1::<u32>().unwrap(), by_index(&view));
        }
    }
    // A batch dimension that is itself strided is not this layout: the general path copies it.
    let t = Tensor::arange(0u32, 2 * 3 * 4, &Device::Cpu).unwrap().reshape((3, 2, 4)).unwrap();
    let view = t.transpose(0, 1).unwrap().transpose(1, 2).unwrap();
    assert_eq!(view.contiguous().unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap(), by_index(&view));
}

/// Large copies made on one of rayon's threads are split among the pool's threads (patch 4): a
/// transposed weight gradient by bands of rows, uniform and scattered blocks by pieces. Every
/// element must still land where the strided copy puts it.
#[test]
fn copies_split_among_rayon_threads_put_every_element_in_place() {
    let dev = Device::Cpu;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    // Each is ≥ 65,536 elements, the size from which the copy is split.
    let n = 300 * 257;
    let stored = Tensor::arange(0u32, n as u32 + 5, &dev).unwrap().narrow(0, 5, n).unwrap();
    let cases = [
        ("transposed", stored.reshape((257, 300)).unwrap().t().unwrap()),
        ("uniform blocks", stored.reshape((300, 257)).unwrap().narrow(1, 3, 250).unwrap()),
        (
            "scattered blocks",
            stored.narrow(0, 0, 4 * 64 * 8 * 37).unwrap().reshape((4, 64, 8, 37)).unwrap().transpose(1, 2).unwrap(),
        ),
        ("one block", stored.narrow(0, 17, 70_000).unwrap()),
    ];
    for (name, view) in cases {
        let copied = pool.install(|| view.force_contiguous().unwrap());
        // Copied again on this thread, which is not rayon's: the serial paths, which the test
        // above checks element by element.
        let want = view.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(copied.flatten_all().unwrap().to_vec1::<u32>().unwrap(), want, "{name}");
    }
}

/// A batch of small products runs one product per rayon thread: every product must equal the
/// same product computed alone (one product: gemm's own split), and both a plain f64 sum.
#[test]
fn batched_small_products_split_among_rayon_threads_equal_each_product_alone() {
    let dev = Device::Cpu;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let (b, m, k, n) = (7, 33, 20, 45);
    let value = |i: usize, s: f32| ((i * 37 % 101) as f32 - 50.0) * s;
    let lhs = Tensor::from_vec((0..b * m * k).map(|i| value(i, 0.013)).collect::<Vec<_>>(), (b, m, k), &dev).unwrap();
    let rhs =
        Tensor::from_vec((0..b * k * n).map(|i| value(i + 3, 0.021)).collect::<Vec<_>>(), (b, k, n), &dev).unwrap();
    // Also with a transposed right-hand side, as attention's q·kᵀ has it.
    let rhs_t = rhs.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
    for (name, rhs) in [("row-major", &rhs), ("transposed", &rhs_t)] {
        let batched = pool.install(|| lhs.matmul(rhs).unwrap());
        for i in 0..b {
            let (l, r) = (lhs.i(i).unwrap(), rhs.i(i).unwrap());
            let alone = pool.install(|| l.matmul(&r).unwrap());
            let got = batched.i(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name}, product {i}");
            let (l, r) = (l.to_vec2::<f32>().unwrap(), r.to_vec2::<f32>().unwrap());
            for (at, g) in got.iter().enumerate() {
                let (row, col) = (at / n, at % n);
                let want: f64 = (0..k).map(|j| l[row][j] as f64 * r[j][col] as f64).sum();
                assert!(
                    (*g as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{name} {i} ({row}, {col}): {g} vs {want}"
                );
            }
        }
    }
}
