//! The checks every x86-64 kernel path's products go through: the exact
//! product a path must give at start-up before it serves, and the tests'
//! comparison with an f64 reference over every shape class.

/// Whether `product(lhs, weight, shape)` (of row-major `lhs [rows, depth]`
/// and `weight [depth, columns]`) gives the exact answer on small integers, which bf16 and the
/// f32 sums hold exactly whatever their order: a CPU or hypervisor that
/// lists a feature without running it correctly is caught before serving.
pub(super) fn exact_product_holds(
    (rows, depth, columns): (usize, usize, usize),
    product: impl FnOnce(&[f32], &[f32], (usize, usize, usize)) -> Vec<f32>,
) -> bool {
    let lhs: Vec<f32> = (0..rows * depth).map(|index| (index % 7) as f32 - 3.0).collect();
    let weight: Vec<f32> = (0..depth * columns).map(|index| (index % 5) as f32 - 2.0).collect();
    let out = product(&lhs, &weight, (rows, depth, columns));
    out.len() == rows * columns
        && (0..rows).all(|row| {
            (0..columns).all(|column| {
                let expected: f32 =
                    (0..depth).map(|index| lhs[row * depth + index] * weight[index * columns + column]).sum();
                out[row * columns + column] == expected
            })
        })
}

/// Runs `product(lhs, weight, rows, depth, columns, parallel)` on each
/// shape, alone and split between threads, and asserts each output within
/// `tolerance` × the sum of its terms' magnitudes of the f64 sum of its
/// terms, each input first passed through `input` (the rounding the path
/// makes, where the reference is to share it).
#[cfg(test)]
pub(super) fn assert_products_near_reference(
    shapes: &[(usize, usize, usize)],
    product: impl Fn(&[f32], &[f32], (usize, usize, usize), bool) -> Vec<f32>,
    input: impl Fn(f32) -> f64,
    tolerance: f64,
) {
    for &(rows, depth, columns) in shapes {
        let lhs: Vec<f32> =
            (0..rows * depth).map(|index| ((index * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let weight: Vec<f32> =
            (0..depth * columns).map(|index| ((index * 53 % 97) as f32 - 48.0) / 23.0).collect();
        for parallel in [false, true] {
            let out = product(&lhs, &weight, (rows, depth, columns), parallel);
            assert_eq!(out.len(), rows * columns);
            for row in 0..rows {
                for column in 0..columns {
                    let terms = (0..depth).map(|index| {
                        input(lhs[row * depth + index]) * input(weight[index * columns + column])
                    });
                    let expected: f64 = terms.clone().sum();
                    let magnitude: f64 = terms.map(f64::abs).sum();
                    let got = f64::from(out[row * columns + column]);
                    assert!(
                        (got - expected).abs() <= tolerance * magnitude.max(1.0),
                        "{rows}x{depth}x{columns} parallel={parallel} [{row},{column}]: {got} vs {expected}"
                    );
                }
            }
        }
    }
}
