//! Closed-form re-fit of the last linear layer, regularised toward the source weights (L2-SP):
//! minimise |H Wᵀ + 1 bᵀ - Y|² + λ |W - W₀|², with the bias free (the data are centred). λ comes
//! from cross-validation over whole episodes, on a log-spaced grid, with one eigendecomposition
//! of the Gram matrix per fold: in its eigenbasis every λ is a diagonal scaling. Sums are kept in
//! f64; the final solve is a Cholesky factorisation.

use nalgebra::{DMatrix, DVector};

use super::compute::{Threads, gemm};

/// Sufficient statistics of a set of rows: Σ h hᵀ, Σ h yᵀ, Σ h, Σ y, Σ y² per output, n.
#[derive(Debug, Clone)]
pub struct Stats {
    hh: DMatrix<f64>,
    hy: DMatrix<f64>,
    h: DVector<f64>,
    y: DVector<f64>,
    yy: DVector<f64>,
    n: f64,
}

impl Stats {
    /// Statistics of rows `h` (n×d) with targets `y` (n×a); the products run on up to
    /// `threads`.
    pub fn of(h: &DMatrix<f64>, y: &DMatrix<f64>, threads: &Threads) -> Stats {
        let (n, d, a) = (h.nrows(), h.ncols(), y.ncols());
        // Column-major h is row-major hᵀ (d×n), so both products are row-major gemms on the
        // buffers as they are: hᵀh (d×d), and yᵀh (a×d), which read column-major is hᵀy.
        let mut hh = DMatrix::zeros(d, d);
        gemm(threads, false, true, d, d, n, 1.0, h.as_slice(), h.as_slice(), 0.0, hh.as_mut_slice());
        hh.fill_upper_triangle_with_lower_triangle();
        let mut hy = DMatrix::zeros(d, a);
        gemm(threads, false, true, a, d, n, 1.0, y.as_slice(), h.as_slice(), 0.0, hy.as_mut_slice());
        let yy = DVector::from_iterator(a, y.column_iter().map(|c| c.norm_squared()));
        Stats { hh, hy, h: h.row_sum().transpose(), y: y.row_sum().transpose(), yy, n: n as f64 }
    }

    /// No rows, for inputs `d` wide and outputs `a` wide.
    pub fn empty(d: usize, a: usize) -> Stats {
        Stats {
            hh: DMatrix::zeros(d, d),
            hy: DMatrix::zeros(d, a),
            h: DVector::zeros(d),
            y: DVector::zeros(a),
            yy: DVector::zeros(a),
            n: 0.0,
        }
    }

    /// Rows counted.
    pub fn n(&self) -> f64 {
        self.n
    }

    /// Adds the rows of `o`.
    pub fn add(&mut self, o: &Stats) {
        self.hh += &o.hh;
        self.hy += &o.hy;
        self.h += &o.h;
        self.y += &o.y;
        self.yy += &o.yy;
        self.n += o.n;
    }

    /// Takes away the rows of `o`, added before.
    pub fn sub(&mut self, o: &Stats) {
        self.hh -= &o.hh;
        self.hy -= &o.hy;
        self.h -= &o.h;
        self.y -= &o.y;
        self.yy -= &o.yy;
        self.n -= o.n;
    }

    /// Squared error per output of `h ↦ W h + b` on these rows, from the sums alone:
    /// Σ(y - wᵀh - b)² = Σy² - 2wᵀΣhy - 2bΣy + wᵀ(Σhhᵀ)w + 2b wᵀΣh + n b².
    pub fn sse(&self, weight: &DMatrix<f64>, bias: &DVector<f64>) -> Vec<f64> {
        (0..weight.nrows())
            .map(|c| {
                let w = weight.row(c).transpose();
                let b = bias[c];
                let v = self.yy[c] - 2.0 * w.dot(&self.hy.column(c)) - 2.0 * b * self.y[c]
                    + w.dot(&(&self.hh * &w))
                    + 2.0 * b * w.dot(&self.h)
                    + self.n * b * b;
                v.max(0.0)
            })
            .collect()
    }

    /// How many numbers [`Stats::each_part`] gives (n aside).
    pub fn numbers(d: usize, a: usize) -> usize {
        d * d + d * a + d + 2 * a
    }

    /// Every sum, in a fixed order, for a file.
    pub fn each_part(&self, put: &mut dyn FnMut(&[f64])) {
        put(self.hh.as_slice());
        put(self.hy.as_slice());
        put(self.h.as_slice());
        put(self.y.as_slice());
        put(self.yy.as_slice());
    }

    /// The statistics [`Stats::each_part`] gave as `v`, over `n` rows.
    pub fn from_parts(d: usize, a: usize, v: &[f64], n: f64) -> Stats {
        let mut at = 0;
        let mut take = |k: usize| {
            at += k;
            &v[at - k..at]
        };
        Stats {
            hh: DMatrix::from_column_slice(d, d, take(d * d)),
            hy: DMatrix::from_column_slice(d, a, take(d * a)),
            h: DVector::from_column_slice(take(d)),
            y: DVector::from_column_slice(take(a)),
            yy: DVector::from_column_slice(take(a)),
            n,
        }
    }

    /// Σ y² over every output.
    pub fn target_energy(&self) -> f64 {
        self.yy.sum()
    }

    /// Whether every sum is a finite number.
    pub fn is_finite(&self) -> bool {
        self.n.is_finite()
            && self.n >= 0.0
            && [self.hh.as_slice(), self.hy.as_slice(), self.h.as_slice(), self.y.as_slice(), self.yy.as_slice()]
                .iter()
                .all(|p| p.iter().all(|v| v.is_finite()))
    }

    /// Centred Gram `HcᵀHc`, cross term `HcᵀYc`, and the means.
    pub fn centred(&self) -> (DMatrix<f64>, DMatrix<f64>, DVector<f64>, DVector<f64>) {
        let mh = &self.h / self.n;
        let my = &self.y / self.n;
        let g = &self.hh - &mh * mh.transpose() * self.n;
        let c = &self.hy - &mh * my.transpose() * self.n;
        (g, c, mh, my)
    }
}

/// A fitted last layer: `W` (a×d) and `b` (a).
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// Weights, `[out, in]`.
    pub weight: DMatrix<f64>,
    /// Bias.
    pub bias: DVector<f64>,
    /// The λ used.
    pub lambda: f64,
}

impl Fit {
    /// Predictions for rows `h` (n×d).
    pub fn predict(&self, h: &DMatrix<f64>) -> DMatrix<f64> {
        let mut p = h * self.weight.transpose();
        for mut row in p.row_iter_mut() {
            row += self.bias.transpose();
        }
        p
    }
}

/// λ candidates: 25 log-spaced values from 1e-6 to 1e6 times the mean eigenvalue of the Gram
/// (its trace over d), so the grid follows the scale of the features.
pub fn grid(stats: &Stats) -> Vec<f64> {
    let (g, ..) = stats.centred();
    let scale = (g.trace() / g.nrows().max(1) as f64).max(1e-12);
    (0..25).map(|i| scale * 10f64.powf(-6.0 + i as f64 * 0.5)).collect()
}

/// The L2-SP solution for one λ on `stats`, by Cholesky (λ > 0 keeps it positive definite even
/// when the features are rank-deficient).
pub fn fit(stats: &Stats, w0: &DMatrix<f64>, lambda: f64) -> Fit {
    let (g, c, mh, my) = stats.centred();
    let d = g.nrows();
    let lhs = &g + DMatrix::identity(d, d) * lambda;
    let rhs = &c + w0.transpose() * lambda;
    let wt = match lhs.clone().cholesky() {
        Some(ch) => ch.solve(&rhs),
        None => {
            let e = lhs.symmetric_eigen();
            let inv = e.eigenvalues.map(|v| if v > 1e-12 { 1.0 / v } else { 0.0 });
            &e.eigenvectors * DMatrix::from_diagonal(&inv) * e.eigenvectors.transpose() * rhs
        }
    };
    let weight = wt.transpose();
    let bias = &my - &weight * &mh;
    Fit { weight, bias, lambda }
}

/// The L2-SP fit on `train` for every λ of `grid`, from one eigendecomposition of its Gram
/// matrix: in its eigenbasis each λ is a diagonal scaling, not a solve.
pub fn fits(train: &Stats, w0: &DMatrix<f64>, grid: &[f64]) -> Vec<Fit> {
    let (g, c, mh, my) = train.centred();
    let eig = g.symmetric_eigen();
    let e = eig.eigenvalues.map(|v| v.max(0.0));
    let q = &eig.eigenvectors;
    let p = q.tr_mul(&c);
    let r = q.tr_mul(&w0.transpose());
    grid.iter()
        .map(|&lambda| {
            let mut z = &p + &r * lambda;
            for (mut row, ev) in z.row_iter_mut().zip(e.iter()) {
                row /= ev + lambda;
            }
            let weight = (q * z).transpose();
            let bias = &my - &weight * &mh;
            Fit { weight, bias, lambda }
        })
        .collect()
}

/// Held-out squared error of every λ in `grid`, summed over the groups (episodes) held out one
/// at a time (groups with the same fold index are held out together). Folds run spread over
/// `threads`; their sums are added in fold order, so the result does not depend on the spread.
pub fn cv_errors(
    groups: &[(Stats, &DMatrix<f64>, &DMatrix<f64>)],
    folds: &[usize],
    w0: &DMatrix<f64>,
    grid: &[f64],
    threads: &Threads,
) -> Vec<f64> {
    let n_folds = folds.iter().max().map_or(0, |m| m + 1);
    let mut per_fold: Vec<Option<Vec<f64>>> = vec![None; n_folds];
    threads.each(per_fold.iter_mut().enumerate(), |(f, out)| *out = fold_errors(groups, folds, f, w0, grid));
    let mut sse = vec![0.0; grid.len()];
    for e in per_fold.into_iter().flatten() {
        sse.iter_mut().zip(e).for_each(|(s, v)| *s += v);
    }
    sse
}

/// Held-out squared error of every λ for fold `f`; None when too few rows are left to fit.
fn fold_errors(
    groups: &[(Stats, &DMatrix<f64>, &DMatrix<f64>)],
    folds: &[usize],
    f: usize,
    w0: &DMatrix<f64>,
    grid: &[f64],
) -> Option<Vec<f64>> {
    let (d, a) = (w0.ncols(), w0.nrows());
    let mut sse = vec![0.0; grid.len()];
    let mut train = Stats::empty(d, a);
    for (g, _) in groups.iter().zip(folds).filter(|(_, k)| **k != f) {
        train.add(&g.0);
    }
    if train.n < 2.0 {
        return None;
    }
    let fits = fits(&train, w0, grid);
    for ((_, h, y), _) in groups.iter().zip(folds).filter(|(_, k)| **k == f) {
        for (total, fit) in sse.iter_mut().zip(&fits) {
            *total += (fit.predict(h) - *y).norm_squared();
        }
    }
    Some(sse)
}

/// Fits by cross-validating λ over `groups` (rows per episode) assigned to `folds`, spread over
/// `threads`; returns the fit on all groups with the best λ.
pub fn fit_cv(groups: &[(&DMatrix<f64>, &DMatrix<f64>)], folds: &[usize], w0: &DMatrix<f64>, threads: &Threads) -> Fit {
    let stats: Vec<(Stats, &DMatrix<f64>, &DMatrix<f64>)> =
        groups.iter().map(|(h, y)| (Stats::of(h, y, threads), *h, *y)).collect();
    let mut all = Stats::empty(w0.ncols(), w0.nrows());
    for s in &stats {
        all.add(&s.0);
    }
    let grid = grid(&all);
    let errors = cv_errors(&stats, folds, w0, &grid, threads);
    let best = errors.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    fit(&all, w0, grid[best])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u64, n: usize, d: usize) -> DMatrix<f64> {
        let v = crate::rng::seeded(seed, n * d);
        DMatrix::from_fn(n, d, |i, j| v[i * d + j] as f64)
    }

    #[test]
    fn recovers_a_linear_map_and_tends_to_the_source_as_lambda_grows() {
        let h = data(1, 200, 6);
        let w_true = data(2, 3, 6);
        let b_true = DVector::from_vec(vec![0.5, -1.0, 2.0]);
        let mut y = &h * w_true.transpose();
        for mut row in y.row_iter_mut() {
            row += b_true.transpose();
        }
        let w0 = data(3, 3, 6);
        let s = Stats::of(&h, &y, &Threads::new(2));
        let f = fit(&s, &w0, 1e-9);
        assert!((f.weight - &w_true).abs().max() < 1e-6);
        assert!((f.bias - &b_true).abs().max() < 1e-6);
        let far = fit(&s, &w0, 1e9);
        assert!((far.weight - &w0).abs().max() < 1e-4, "λ → ∞ returns the source weights");
    }

    #[test]
    fn cross_validation_in_the_eigenbasis_equals_one_solve_per_lambda() {
        let mut groups = Vec::new();
        for e in 0..4u64 {
            let h = data(10 + e, 30, 5);
            let noise = data(20 + e, 30, 2) * 0.3;
            let y = &h * data(5, 2, 5).transpose() + noise;
            groups.push((h, y));
        }
        let w0 = data(6, 2, 5);
        let stats: Vec<_> = groups.iter().map(|(h, y)| (Stats::of(h, y, &Threads::default()), h, y)).collect();
        let folds = [0, 1, 2, 3];
        let grid = [1e-3, 0.1, 10.0, 1000.0];
        let fast = cv_errors(&stats, &folds, &w0, &grid, &Threads::default());
        assert_eq!(fast, cv_errors(&stats, &folds, &w0, &grid, &Threads::new(3)), "threads change nothing");
        for (i, &lambda) in grid.iter().enumerate() {
            let mut slow = 0.0;
            for (f, (h, y)) in groups.iter().enumerate() {
                let mut train = Stats::empty(5, 2);
                for (_, g) in stats.iter().enumerate().filter(|(k, _)| *k != f) {
                    train.add(&g.0);
                }
                let fit = fit(&train, &w0, lambda);
                slow += (fit.predict(h) - y).norm_squared();
            }
            assert!((fast[i] - slow).abs() < 1e-8 * slow.max(1.0), "λ={lambda}: {} vs {slow}", fast[i]);
        }
    }

    #[test]
    fn rank_deficient_features_are_handled() {
        let base = data(7, 50, 3);
        let h = DMatrix::from_fn(50, 6, |i, j| base[(i, j % 3)]);
        let y = data(8, 50, 2);
        let f = fit(&Stats::of(&h, &y, &Threads::default()), &DMatrix::zeros(2, 6), 1e-6);
        assert!(f.weight.iter().all(|v| v.is_finite()));
        let refit = fit_cv(&[(&h, &y)], &[0], &DMatrix::zeros(2, 6), &Threads::new(2));
        assert!(refit.weight.iter().all(|v| v.is_finite()));
    }
}
