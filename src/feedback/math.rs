//! Special functions for the Beta posteriors: log-gamma, the regularized incomplete beta
//! function, Beta quantiles and Beta sampling. Hand-written because the crate set has no
//! statistics library and we need only these few, well-known algorithms.

use rand::Rng;

/// Parameters of a Beta(α, β) distribution. Both must be > 0 and finite.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BetaParams {
    pub alpha: f64,
    pub beta: f64,
}

impl BetaParams {
    pub fn new(alpha: f64, beta: f64) -> Self {
        BetaParams { alpha, beta }
    }
    pub fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }
    pub fn variance(&self) -> f64 {
        let s = self.alpha + self.beta;
        self.alpha * self.beta / (s * s * (s + 1.0))
    }
    pub fn sd(&self) -> f64 {
        self.variance().sqrt()
    }
    /// P(Q <= x).
    pub fn cdf(&self, x: f64) -> f64 {
        reg_inc_beta(self.alpha, self.beta, x)
    }
    /// Probability density at x (0 outside (0, 1)).
    pub fn pdf(&self, x: f64) -> f64 {
        if x <= 0.0 || x >= 1.0 {
            return 0.0;
        }
        ((self.alpha - 1.0) * x.ln() + (self.beta - 1.0) * (-x).ln_1p()
            - ln_beta(self.alpha, self.beta))
        .exp()
    }
    /// The p-quantile (inverse CDF), by bisection: slow-ish but monotone and robust.
    pub fn quantile(&self, p: f64) -> f64 {
        beta_quantile(self.alpha, self.beta, p)
    }
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        sample_beta(rng, self.alpha, self.beta)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps accuracy for small arguments.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// ln B(a, b).
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// Regularized incomplete beta I_x(a, b) = P(Beta(a, b) <= x).
pub fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() + b * (-x).ln_1p() - ln_beta(a, b);
    // The continued fraction converges fast for x < (a+1)/(a+b+2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        (ln_front.exp() * beta_cf(a, b, x) / a).clamp(0.0, 1.0)
    } else {
        (1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b).clamp(0.0, 1.0)
    }
}

/// Continued fraction for the incomplete beta (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    // Iterations needed grow like sqrt(max(a, b)); bound generously but finitely.
    let max_iter = 200 + (a.max(b).sqrt() * 10.0) as usize;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=max_iter {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// The p-quantile of Beta(a, b) by bisection on the CDF (60 halvings: ~1e-18 in x).
pub fn beta_quantile(a: f64, b: f64, p: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if reg_inc_beta(a, b, mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// A standard normal draw (Box–Muller; the second value is discarded for simplicity).
pub fn sample_std_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A Gamma(shape, 1) draw (Marsaglia–Tsang; boosted for shape < 1).
pub fn sample_gamma<R: Rng + ?Sized>(rng: &mut R, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.gen::<f64>();
        return sample_gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    // Acceptance rate is > 95%; the bound only guards against a broken RNG.
    for _ in 0..1000 {
        let x = sample_std_normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u: f64 = 1.0 - rng.gen::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
    d
}

/// A Beta(a, b) draw via two Gamma draws.
pub fn sample_beta<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    let x = sample_gamma(rng, a);
    let y = sample_gamma(rng, b);
    if x + y <= 0.0 {
        return a / (a + b);
    }
    x / (x + y)
}

/// Nodes and weights of 8-point Gauss–Legendre quadrature on [-1, 1].
pub const GL8: [(f64, f64); 8] = [
    (-0.960_289_856_497_536_3, 0.101_228_536_290_376_26),
    (-0.796_666_477_413_626_7, 0.222_381_034_453_374_47),
    (-0.525_532_409_916_329, 0.313_706_645_877_887_3),
    (-0.183_434_642_495_649_8, 0.362_683_783_378_362),
    (0.183_434_642_495_649_8, 0.362_683_783_378_362),
    (0.525_532_409_916_329, 0.313_706_645_877_887_3),
    (0.796_666_477_413_626_7, 0.222_381_034_453_374_47),
    (0.960_289_856_497_536_3, 0.101_228_536_290_376_26),
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ln_gamma_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-13);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        // Stirling check at a large argument.
        let x = 1e5f64;
        let stirling =
            (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * x);
        assert!((ln_gamma(x) - stirling).abs() / stirling.abs() < 1e-12);
    }

    #[test]
    fn incomplete_beta_closed_forms() {
        // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1-x)^b.
        for &x in &[0.01, 0.2, 0.5, 0.77, 0.999] {
            assert!((reg_inc_beta(1.0, 1.0, x) - x).abs() < 1e-13);
            assert!((reg_inc_beta(3.5, 1.0, x) - x.powf(3.5)).abs() < 1e-12);
            assert!((reg_inc_beta(1.0, 7.0, x) - (1.0 - (1.0 - x).powi(7))).abs() < 1e-12);
        }
        // Symmetry I_x(a,b) = 1 - I_{1-x}(b,a) for large parameters.
        let (a, b, x) = (40_000.0, 9_000.0, 0.816);
        assert!((reg_inc_beta(a, b, x) - (1.0 - reg_inc_beta(b, a, 1.0 - x))).abs() < 1e-10);
        // Median of a symmetric Beta.
        assert!((reg_inc_beta(250.0, 250.0, 0.5) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn quantile_inverts_cdf() {
        let b = BetaParams::new(12.5, 40.0);
        for &p in &[0.001, 0.05, 0.5, 0.95, 0.999] {
            let q = b.quantile(p);
            assert!((b.cdf(q) - p).abs() < 1e-10, "p={p}");
        }
    }

    #[test]
    fn beta_sampler_moments() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let b = BetaParams::new(3.0, 9.0);
        let n = 50_000;
        let xs: Vec<f64> = (0..n).map(|_| b.sample(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - b.mean()).abs() < 0.003, "mean {mean}");
        assert!((var - b.variance()).abs() < 0.001, "var {var}");
        // Shapes below one still sample correctly.
        let small = BetaParams::new(0.5, 0.5);
        let m = (0..n).map(|_| small.sample(&mut rng)).sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.01);
    }

    #[test]
    fn gauss_legendre_integrates_polynomials() {
        // Exact for degree <= 15: ∫_{-1}^{1} x^14 dx = 2/15.
        let s: f64 = GL8.iter().map(|(x, w)| w * x.powi(14)).sum();
        assert!((s - 2.0 / 15.0).abs() < 1e-13);
        let w: f64 = GL8.iter().map(|(_, w)| w).sum();
        assert!((w - 2.0).abs() < 1e-13);
    }
}
