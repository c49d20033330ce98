use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;

/// The AMX tests need the hardware; on other machines they say so and check nothing else.
fn amx_or_skip(test: &str) -> bool {
    let here = available();
    if !here {
        eprintln!("{test}: skipped, this CPU or OS gives no AMX-BF16 and no AMD AVX512-BF16");
    }
    here
}

/// Every unit this CPU can run, whether or not `unit()` picks it: AVX512-BF16's kernel is also
/// checked on Intel CPUs that have the instruction.
fn units_here(test: &str) -> Vec<Unit> {
    let mut units = vec![];
    if amx_usable() {
        units.push(Unit::Amx);
    }
    if avx512_bf16() {
        units.push(Unit::Avx512Bf16);
    }
    if units.is_empty() {
        eprintln!("{test}: skipped, this CPU or OS gives neither AMX-BF16 nor AVX512-BF16");
    }
    units
}

fn rounded(x: f32) -> f32 {
    f32::from_bits((pack::bf16(x) as u32) << 16)
}

#[test]
fn bf16_rounds_to_nearest_even_as_half_does() {
    let mut rng = StdRng::seed_from_u64(7);
    let specials = [0.0, -0.0, 1.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY];
    // Exact ties below and above an even mantissa, and one just past a tie.
    let ties = [f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), f32::from_bits(0x3f80_8001)];
    let random = (0..100_000).map(|_| f32::from_bits(rng.random::<u32>())).filter(|x| !x.is_nan());
    for x in specials.into_iter().chain(ties).chain(random) {
        assert_eq!(pack::bf16(x), half::bf16::from_f32(x).to_bits(), "{x:e} ({:#010x})", x.to_bits());
    }
    for nan in [f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xff80_0001)] {
        assert!(rounded(nan).is_nan(), "{:#010x} lost its NaN", nan.to_bits());
    }
}

/// `op(A) · op(B)` in f64 over the bf16-rounded operands, and the sum of |products| per entry
/// (the scale of f32's rounding in a sum of that many terms).
fn reference(a: MatrixRef<'_>, b: MatrixRef<'_>) -> (Vec<f64>, Vec<f64>) {
    let at = |m: &MatrixRef<'_>, i: usize, j: usize| rounded(m.data[i * m.row_stride + j * m.col_stride]) as f64;
    let (mut sum, mut scale) = (vec![0.0; a.rows * b.cols], vec![0.0; a.rows * b.cols]);
    for i in 0..a.rows {
        for j in 0..b.cols {
            for k in 0..a.cols {
                let p = at(&a, i, k) * at(&b, k, j);
                sum[i * b.cols + j] += p;
                scale[i * b.cols + j] += p.abs();
            }
        }
    }
    (sum, scale)
}

#[test]
fn products_match_f64_sums_of_the_rounded_operands() {
    for unit in units_here("products_match_f64_sums_of_the_rounded_operands") {
        products_match_on(unit);
    }
}

fn products_match_on(unit: Unit) {
    let mut rng = StdRng::seed_from_u64(11);
    // Edges of every kind: below one tile, not a multiple of 16/32, several column passes.
    for (m, k, n) in [(1, 1, 1), (37, 70, 45), (64, 32, 96), (33, 100, 17), (5, 300, 530)] {
        for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
            let a_data: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let b_data: Vec<f32> = (0..k * n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let a = if a_t {
                MatrixRef::new(&a_data, k, m, m, 1).unwrap().t()
            } else {
                MatrixRef::new(&a_data, m, k, k, 1).unwrap()
            };
            let b = if b_t {
                MatrixRef::new(&b_data, n, k, k, 1).unwrap().t()
            } else {
                MatrixRef::new(&b_data, k, n, n, 1).unwrap()
            };
            let c = matmul_on(unit, a, b);
            let (want, scale) = reference(a, b);
            assert_eq!(c.len(), m * n);
            for (idx, ((&got, &want), &scale)) in c.iter().zip(&want).zip(&scale).enumerate() {
                let tolerance = 1e-6 * scale * (k as f64).sqrt() + 1e-30;
                assert!(
                    (got as f64 - want).abs() <= tolerance,
                    "{unit:?}: {m}×{k}·{k}×{n} (a_t {a_t}, b_t {b_t}) at {idx}: {got} vs {want} (± {tolerance:e})"
                );
            }
        }
    }
}

#[test]
fn matrix_views_reject_data_too_short() {
    let data = [0f32; 6];
    assert!(MatrixRef::new(&data, 2, 3, 3, 1).is_some());
    assert!(MatrixRef::new(&data, 3, 3, 3, 1).is_none());
    assert!(MatrixRef::new(&data, 2, 3, 1, 3).is_none());
}

#[test]
fn linear_and_its_gradients_match_f32_products_of_bf16_values() -> candle_core::Result<()> {
    if !amx_or_skip("linear_and_its_gradients_match_f32_products_of_bf16_values") {
        return Ok(());
    }
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(3);
    let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| rounded(rng.random_range(-1.0..1.0))).collect() };
    // bf16 values throughout, so f32 products are exact and only the order of the sums differs;
    // `g` is the upstream gradient (bf16 too: the AMX backward rounds it).
    let (b, t, k, n) = (3, 21, 70, 45);
    let x = Var::from_vec(values(b * t * k), (b, t, k), &dev)?;
    let w = Var::from_vec(values(n * k), (n, k), &dev)?;
    let g = Tensor::from_vec(values(b * t * n), (b, t, n), &dev)?;
    let run = |y: Tensor| -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let grads = (&y * &g)?.sum_all()?.backward()?;
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        Ok((flat(&y)?, flat(grads.get(&x).unwrap())?, flat(grads.get(&w).unwrap())?))
    };
    let amx = run(linear(&x, &w)?)?;
    let plain = run(x.broadcast_matmul(&w.t()?)?)?;
    for (name, got, want) in [("y", &amx.0, &plain.0), ("dx", &amx.1, &plain.1), ("dw", &amx.2, &plain.2)] {
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: differs by {worst}");
    }
    Ok(())
}

/// Every value of a packed strip where the kernel reads it: A's row i, K index k at tile
/// `k / 32`, row `i % 16`, position `k % 32`; B's (k, j) at tile `k / 32`, pair row `k % 32 / 2`,
/// column `j % 16`, half `k % 2`. Row-major and transposed views, whole and edge tiles, ties
/// and NaN among the values (the whole-tile path rounds 16 lanes at a time).
#[test]
fn packed_tiles_hold_every_value_rounded_where_the_kernel_reads_it() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("packed_tiles_hold_every_value_rounded_where_the_kernel_reads_it: skipped, no AVX-512");
        return;
    }
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, cols) = (40, 70);
    let data: Vec<f32> = (0..rows * cols)
        .map(|i| match i % 7 {
            0 => f32::from_bits(0x3f80_8000 + ((i as u32 % 2) << 16)), // a tie, even or odd below
            1 if i % 5 == 0 => f32::NAN,
            _ => rng.random_range(-3.0..3.0),
        })
        .collect();
    let half = |p: &[u32], at: usize, high: bool| (p[at] >> (16 * high as u32)) as u16;
    let same = |got: u16, want: f32, what: &str| {
        if want.is_nan() {
            assert!(f32::from_bits((got as u32) << 16).is_nan(), "{what}: NaN lost");
        } else {
            assert_eq!(got, pack::bf16(want), "{what}: {want}");
        }
    };
    for transposed in [false, true] {
        let m = if transposed {
            MatrixRef::new(&data, cols, rows, 1, cols).unwrap()
        } else {
            MatrixRef::new(&data, rows, cols, cols, 1).unwrap()
        };
        let value = |i: usize, j: usize| data[i * m.row_stride + j * m.col_stride];
        let chunks = m.cols.div_ceil(32);
        let a = pack::pack_a(&m, 2 * m.rows.div_ceil(32), chunks, pack::Threads::Pool);
        for i in 0..m.rows {
            for k in 0..m.cols {
                let at = ((i / 16) * chunks + k / 32) * 256 + (i % 16) * 16 + (k % 32) / 2;
                same(half(&a, at, k % 2 == 1), value(i, k), &format!("A transposed {transposed} ({i}, {k})"));
            }
        }
        let chunks = m.rows.div_ceil(32);
        let b = pack::pack_b(&m, 2 * m.cols.div_ceil(32), chunks, pack::Threads::Here);
        for k in 0..m.rows {
            for j in 0..m.cols {
                let at = ((j / 16) * chunks + k / 32) * 256 + (k % 32 / 2) * 16 + j % 16;
                same(half(&b, at, k % 2 == 1), value(k, j), &format!("B transposed {transposed} ({k}, {j})"));
            }
        }
        // Padding reads as zero: the first row past A's last in its strip.
        if m.rows % 16 != 0 {
            let at = ((m.rows / 16) * m.cols.div_ceil(32)) * 256 + (m.rows % 16) * 16;
            assert_eq!(a[at], 0, "A padding");
        }
    }
}

/// `matmul_here` on one thread is the pool's product to the last bit (the same kernel sums the
/// same chunks in the same order), and leaving out chunks whose terms are all zero changes no
/// bit either: A is block lower-triangular (zero beyond the diagonal chunk, as attention's
/// probabilities), and block (band, column) sums chunks `0..=band` only. A block given no chunk
/// is zeros.
#[test]
fn products_here_match_the_pool_and_skip_zero_chunks_exactly() {
    if !amx_or_skip("products_here_match_the_pool_and_skip_zero_chunks_exactly") {
        return;
    }
    let mut rng = StdRng::seed_from_u64(5);
    for (m, k, n) in [(1, 1, 1), (96, 96, 64), (70, 70, 45), (33, 100, 17)] {
        let mut a_data: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let b_data: Vec<f32> = (0..k * n).map(|_| rng.random_range(-2.0..2.0)).collect();
        let b = MatrixRef::new(&b_data, k, n, n, 1).unwrap();
        let full = |a: MatrixRef<'_>| {
            let mut c = vec![f32::NAN; m * n];
            matmul_here(a, b, |_, _| 0..usize::MAX, &mut c);
            c
        };
        let a = MatrixRef::new(&a_data, m, k, k, 1).unwrap();
        assert_eq!(full(a), matmul(a, b), "{m}×{k}·{k}×{n}: one thread against the pool");
        for i in 0..m {
            for kk in (i / BLOCK + 1) * BLOCK..k {
                a_data[i * k + kk] = 0.0;
            }
        }
        let a = MatrixRef::new(&a_data, m, k, k, 1).unwrap();
        let mut skipped = vec![f32::NAN; m * n];
        matmul_here(a, b, |band, _| 0..band + 1, &mut skipped);
        assert_eq!(skipped, full(a), "{m}×{k}·{k}×{n}: skipping zero chunks");
        let mut none = vec![f32::NAN; m * n];
        matmul_here(a, b, |band, column| if (band + column) % 2 == 0 { 0..0 } else { 0..band + 1 }, &mut none);
        for (idx, (&got, &want)) in none.iter().zip(&skipped).enumerate() {
            let (band, column) = (idx / n / BLOCK, idx % n / BLOCK);
            let want = if (band + column) % 2 == 0 { 0.0 } else { want };
            assert_eq!(got.to_bits(), want.to_bits(), "{m}×{k}·{k}×{n} at {idx}: a block given no chunk");
        }
    }
}

/// Both packings of one pass are the separate packings to the bit, for every pairing of
/// operands, on shapes with edge tiles on both axes and a NaN among the values.
#[test]
fn packing_twice_in_one_pass_gives_the_two_packings() {
    if !amx_or_skip("packing_twice_in_one_pass_gives_the_two_packings") {
        return;
    }
    use pack::Operand;
    let mut rng = StdRng::seed_from_u64(11);
    for (rows, cols) in [(40, 70), (64, 96), (7, 33), (96, 16), (0, 40), (40, 0)] {
        let mut data: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
        if let Some(middle) = data.get_mut(rows * cols / 2) {
            *middle = f32::NAN;
        }
        let m = MatrixRef::new(&data, rows, cols, cols, 1).unwrap();
        let (strips_r, strips_c) = (2 * rows.div_ceil(32), 2 * cols.div_ceil(32));
        let (chunks_r, chunks_c) = (rows.div_ceil(32), cols.div_ceil(32));
        for first in [Operand::A, Operand::B] {
            for second in [Operand::A, Operand::B] {
                let (one, two) = pack::pack_twice(&m, first, second);
                let want_one = match first {
                    Operand::A => pack::pack_a(&m, strips_r, chunks_c, pack::Threads::Pool),
                    Operand::B => pack::pack_b(&m.t(), strips_r, chunks_c, pack::Threads::Pool),
                };
                let want_two = match second {
                    Operand::A => pack::pack_a(&m.t(), strips_c, chunks_r, pack::Threads::Pool),
                    Operand::B => pack::pack_b(&m, strips_c, chunks_r, pack::Threads::Pool),
                };
                assert!(one == want_one, "{rows}×{cols}: the first packing differs");
                assert!(two == want_two, "{rows}×{cols}: the second packing differs");
            }
        }
    }
}

/// A projection that keeps its packings for the backward pass gives the products of one that
/// packs afresh, to the bit: the forward of constants (nothing kept) against the forward of
/// variables, and a second backward pass (the first took what was kept) against the first.
#[test]
fn kept_packings_give_the_fresh_products_exactly() -> candle_core::Result<()> {
    if !amx_or_skip("kept_packings_give_the_fresh_products_exactly") {
        return Ok(());
    }
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(13);
    let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (rows, k, n) = (70, 45, 38);
    let x = Var::from_vec(values(rows * k), (rows, k), &dev)?;
    let w = Var::from_vec(values(n * k), (n, k), &dev)?;
    let g = Tensor::from_vec(values(rows * n), (rows, n), &dev)?;
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let y = linear(&x, &w)?;
    let constant = linear(&x.as_tensor().detach(), &w.as_tensor().detach())?;
    assert!(!constant.track_op());
    assert_eq!(flat(&y)?, flat(&constant)?);
    let loss = (&y * &g)?.sum_all()?;
    let (once, twice) = (loss.backward()?, loss.backward()?);
    for var in [&x, &w] {
        assert_eq!(flat(once.get(var).unwrap())?, flat(twice.get(var).unwrap())?);
    }
    Ok(())
}

/// Projections reading the same activation share its packing (q, k and v do); they give what
/// projections packing it afresh give, to the bit, forward and backward; an activation of the
/// same shape but other values is packed anew.
#[test]
fn projections_of_one_activation_share_its_packing_exactly() -> candle_core::Result<()> {
    if !amx_or_skip("projections_of_one_activation_share_its_packing_exactly") {
        return Ok(());
    }
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(17);
    let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (rows, k, n) = (66, 40, 35);
    let x = Var::from_vec(values(rows * k), (rows, k), &dev)?;
    let (w1, w2) = (Var::from_vec(values(n * k), (n, k), &dev)?, Var::from_vec(values(n * k), (n, k), &dev)?);
    let (g1, g2) =
        (Tensor::from_vec(values(rows * n), (rows, n), &dev)?, Tensor::from_vec(values(rows * n), (rows, n), &dev)?);
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    // `shared`: both projections read one activation; `apart`: each its own (equal values).
    let run = |shared: bool| -> candle_core::Result<Vec<Vec<f32>>> {
        let act = x.as_tensor().tanh()?;
        let other = if shared { act.clone() } else { x.as_tensor().tanh()? };
        let (y1, y2) = (linear(&act, &w1)?, linear(&other, &w2)?);
        let loss = ((&y1 * &g1)?.sum_all()? + (&y2 * &g2)?.sum_all()?)?;
        let grads = loss.backward()?;
        Ok(vec![
            flat(&y1)?,
            flat(&y2)?,
            flat(grads.get(&x).unwrap())?,
            flat(grads.get(&w1).unwrap())?,
            flat(grads.get(&w2).unwrap())?,
        ])
    };
    let (shared, apart) = (run(true)?, run(false)?);
    for (i, name) in ["y1", "y2"].iter().enumerate().chain([(3, &"dw1"), (4, &"dw2")]) {
        assert!(shared[i] == apart[i], "{name} differs");
    }
    // ∂x sums the two projections' shares in another order when they meet at one tanh.
    let worst = shared[2].iter().zip(&apart[2]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "dx differs by {worst}");
    // Same shape, other values, right after: not the packing of the first.
    let act = x.as_tensor().tanh()?;
    let first = linear(&act, &w1)?;
    let doubled = (&act * 2.0)?;
    let second = linear(&doubled, &w1)?;
    let want = linear(&doubled.detach(), &w1.as_tensor().detach())?;
    assert!(flat(&second)? == flat(&want)?, "the doubled activation's product is not its own");
    assert!(flat(&second)? != flat(&first)?);
    Ok(())
}
