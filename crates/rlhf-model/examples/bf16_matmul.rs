//! GFLOP/s of the mixed-precision product (`rlhf_model::amx::matmul`, packing included) at the
//! bench model's and SmolLM2's projection shapes, on whichever unit this CPU has:
//! `cargo run --release -p rlhf-model --example bf16_matmul` (`RAYON_NUM_THREADS=1` for one core).

use std::time::Instant;

use rlhf_model::amx::{MatrixRef, matmul, unit};

fn main() {
    let Some(unit) = unit() else {
        eprintln!("no bf16 unit here: AMX-BF16 (Intel Xeon 4th generation or later) or AVX512-BF16 on AMD");
        std::process::exit(2);
    };
    println!("unit: {unit:?}");
    // (m, k, n, whether A is read as the transpose of a k × m matrix: a weight gradient ∂yᵀ·x).
    let shapes = [
        (2048, 256, 688, false),
        (2048, 688, 256, false),
        (256, 2048, 688, false),
        (688, 1536, 256, true),
        (1024, 1024, 1024, false),
        (2048, 576, 1536, false),
    ];
    for (m, k, n, a_transposed) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i * 7 % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i * 5 % 11) as f32 * 0.1).collect();
        let a = if a_transposed {
            MatrixRef::new(&a, k, m, m, 1).unwrap().t()
        } else {
            MatrixRef::new(&a, m, k, k, 1).unwrap()
        };
        let b = MatrixRef::new(&b, k, n, n, 1).unwrap();
        std::hint::black_box(matmul(a, b));
        let repeats = 20;
        let start = Instant::now();
        for _ in 0..repeats {
            std::hint::black_box(matmul(a, b));
        }
        let seconds = start.elapsed().as_secs_f64() / repeats as f64;
        let a_name = if a_transposed { format!("({k} × {m})ᵀ") } else { format!("{m} × {k}") };
        println!("{a_name} by {k} × {n}: {:.1} GFLOP/s", 2.0 * (m * k * n) as f64 / seconds / 1e9);
    }
}
