//! Which kernel set runs, chosen once per process for the CPU found.
//!
//! The binary is built for baseline x86-64 (or any other target); the SIMD kernels are
//! compiled with `#[target_feature]` and only called through a [`Kernels`] value, which
//! exists only for sets this CPU supports. `ENCDEC_KERNELS=portable|avx2|avx512` forces
//! a lower set (to compare them, or to rule a kernel out when chasing a difference); a
//! set above what the CPU has is clamped, with a warning.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that forces a kernel set.
pub const KERNELS_ENV: &str = "ENCDEC_KERNELS";

/// A family of kernels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelSet {
    /// Plain Rust, correct on every target.
    Portable,
    /// 8-lane f32 with FMA (x86-64 with AVX2 and FMA).
    Avx2,
    /// 16-lane f32 with FMA (x86-64 with AVX-512F); kernels without an AVX-512 variant
    /// run their AVX2 one.
    Avx512,
}

impl KernelSet {
    pub const ALL: [KernelSet; 3] = [KernelSet::Portable, KernelSet::Avx2, KernelSet::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Portable => "portable",
            KernelSet::Avx2 => "avx2",
            KernelSet::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for KernelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU features the kernels care about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    /// With AVX-512F and VNNI: the int8 dot-product kernel.
    pub avx512bw: bool,
    /// With AVX-512F/BW: bf16 weights run the `vdpbf16ps` kernel (`kernels/dot.rs`).
    pub avx512_bf16: bool,
    /// With AVX-512F/BW: int8 weights run the `vpdpbusd` kernel (`kernels/dot.rs`).
    pub avx512_vnni: bool,
}

impl CpuFeatures {
    /// This CPU's features, detected once.
    pub fn get() -> Self {
        static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
        *FEATURES.get_or_init(Self::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Self {
        use std::arch::is_x86_feature_detected as has;
        Self {
            avx2: has!("avx2"),
            fma: has!("fma"),
            avx512f: has!("avx512f"),
            avx512bw: has!("avx512bw"),
            avx512_bf16: has!("avx512bf16"),
            avx512_vnni: has!("avx512vnni"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Self {
        Self::default()
    }

    /// The highest set these features run.
    pub fn best(&self) -> KernelSet {
        if self.avx2 && self.fma && self.avx512f {
            KernelSet::Avx512
        } else if self.avx2 && self.fma {
            KernelSet::Avx2
        } else {
            KernelSet::Portable
        }
    }

    fn names(&self) -> Vec<&'static str> {
        [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.avx512_vnni, "avx512_vnni"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// A kernel set that this CPU runs. The SIMD kernels are only reached through one, so
/// holding it is what makes calling them sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels(KernelSet);

impl Kernels {
    /// The process-wide choice ([`kernel_choice`]).
    pub fn chosen() -> Self {
        Self(kernel_choice().kernels)
    }

    /// `set`, if this CPU supports it.
    pub fn supported(set: KernelSet) -> Option<Self> {
        (set <= CpuFeatures::get().best()).then_some(Self(set))
    }

    /// Every set this CPU supports, lowest first (for tests and benchmarks).
    pub fn all_supported() -> Vec<Self> {
        KernelSet::ALL
            .into_iter()
            .filter_map(Self::supported)
            .collect()
    }

    pub fn set(self) -> KernelSet {
        self.0
    }

    /// AVX2 and FMA are available (the AVX2 and AVX-512 sets).
    pub fn has_avx2(self) -> bool {
        self.0 >= KernelSet::Avx2
    }

    /// AVX-512F (and AVX2, FMA) are available.
    pub fn has_avx512(self) -> bool {
        self.0 >= KernelSet::Avx512
    }

    /// The AVX-512 set on a CPU with AVX-512BW and VNNI: int8 × int8 dot products.
    pub fn has_avx512_vnni(self) -> bool {
        let cpu = CpuFeatures::get();
        self.has_avx512() && cpu.avx512bw && cpu.avx512_vnni
    }

    /// The AVX-512 set on a CPU with AVX-512BW and AVX512_BF16: bf16 dot products.
    pub fn has_avx512_bf16(self) -> bool {
        let cpu = CpuFeatures::get();
        self.has_avx512() && cpu.avx512bw && cpu.avx512_bf16
    }
}

/// The kernel set in use and why: what `/info` and `encdec generate --timings` report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelChoice {
    /// The set the kernels run.
    pub kernels: KernelSet,
    /// The highest set this CPU supports.
    pub best_supported: KernelSet,
    /// What the CPU has, of the features the kernels care about.
    pub cpu_features: Vec<&'static str>,
    /// The value of `ENCDEC_KERNELS`, if set.
    pub requested: Option<String>,
    /// Why the request was not followed, if it was not.
    pub warning: Option<String>,
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (cpu: {}", self.kernels, self.cpu_features.join(" "))?;
        if let Some(r) = &self.requested {
            write!(f, "; {KERNELS_ENV}={r}")?;
        }
        f.write_str(")")
    }
}

/// The kernel set of this process: the best the CPU supports, or a lower one forced
/// with `ENCDEC_KERNELS`. Decided (and logged) on first use.
pub fn kernel_choice() -> &'static KernelChoice {
    static CHOICE: OnceLock<KernelChoice> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let choice = choose(CpuFeatures::get(), std::env::var(KERNELS_ENV).ok());
        if let Some(w) = &choice.warning {
            tracing::warn!("{w}");
        }
        tracing::info!(
            kernels = %choice.kernels,
            cpu = %choice.cpu_features.join(" "),
            "CPU kernels chosen"
        );
        choice
    })
}

fn choose(cpu: CpuFeatures, requested: Option<String>) -> KernelChoice {
    let best = cpu.best();
    let (kernels, warning) = match requested.as_deref().map(|r| (r, KernelSet::parse(r))) {
        None => (best, None),
        Some((_, Some(set))) if set <= best => (set, None),
        Some((r, Some(_))) => (
            best,
            Some(format!(
                "{KERNELS_ENV}={r} asks for more than this CPU supports; using {best}"
            )),
        ),
        Some((r, None)) => (
            best,
            Some(format!(
                "{KERNELS_ENV}={r} is not one of portable, avx2, avx512; using {best}"
            )),
        ),
    };
    KernelChoice {
        kernels,
        best_supported: best,
        cpu_features: cpu.names(),
        requested,
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_followed_downwards_and_clamped_upwards() {
        let avx2 = CpuFeatures {
            avx2: true,
            fma: true,
            ..Default::default()
        };
        let pick = |cpu, r: Option<&str>| choose(cpu, r.map(str::to_string));
        assert_eq!(pick(avx2, None).kernels, KernelSet::Avx2);
        assert_eq!(pick(avx2, Some("portable")).kernels, KernelSet::Portable);
        assert_eq!(pick(avx2, Some(" AVX2 ")).kernels, KernelSet::Avx2);
        let clamped = pick(avx2, Some("avx512"));
        assert_eq!(clamped.kernels, KernelSet::Avx2);
        assert!(clamped.warning.unwrap().contains("more than this CPU"));
        let bad = pick(avx2, Some("sse9"));
        assert_eq!(bad.kernels, KernelSet::Avx2);
        assert!(bad.warning.unwrap().contains("not one of"));
        // AVX2 without FMA runs the portable kernels.
        let no_fma = CpuFeatures {
            avx2: true,
            ..Default::default()
        };
        assert_eq!(pick(no_fma, None).kernels, KernelSet::Portable);
        let all = CpuFeatures {
            avx2: true,
            fma: true,
            avx512f: true,
            avx512bw: true,
            avx512_bf16: true,
            avx512_vnni: true,
        };
        assert_eq!(pick(all, None).kernels, KernelSet::Avx512);
        assert_eq!(
            pick(all, Some("avx2")).to_string(),
            "avx2 (cpu: avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni; ENCDEC_KERNELS=avx2)"
        );
    }

    #[test]
    fn only_supported_sets_are_handed_out() {
        let best = CpuFeatures::get().best();
        for set in KernelSet::ALL {
            assert_eq!(Kernels::supported(set).is_some(), set <= best);
        }
        assert!(Kernels::chosen().set() <= best);
    }
}
