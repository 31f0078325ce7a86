//! The emulated CUDA driver's counters (tests/emu/driver.cpp exports `emu_counters` and
//! `emu_copy_counters` from its `libcuda.so.1`), for tests that assert how many launches
//! and copies an operation makes. NVIDIA's driver has no such symbols: [`Counters::open`]
//! is then `Err` and the test prints `SKIP` (tests/common/gpu.rs). The counters are
//! process-wide: a test binary that asserts them holds one `#[test]`, so that no other test
//! adds its launches in parallel.
#![allow(dead_code)]

type EmuCounters = unsafe extern "C" fn(*mut u64);

/// Launches and copies so far, process-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub launches: u64,
    pub htod: u64,
    pub dtoh: u64,
    pub dtod: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            launches: self.launches - o.launches,
            htod: self.htod - o.htod,
            dtoh: self.dtoh - o.dtoh,
            dtod: self.dtod - o.dtod,
        }
    }
}

/// The emulated driver's counter functions.
pub struct Counters {
    _lib: libloading::Library,
    launches: EmuCounters,
    copies: EmuCounters,
}

impl Counters {
    /// `Err(reason)` on a driver without the counters (a real GPU).
    pub fn open() -> Result<Self, String> {
        // SAFETY: loading the CUDA driver library, which the backend has already loaded
        // (cudarc dlopens the same name); its initialisers have run.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }
            .map_err(|e| format!("cannot load libcuda.so.1: {e}"))?;
        // SAFETY: `extern "C" void emu_counters(unsigned long long out[4])` and
        // `extern "C" void emu_copy_counters(unsigned long long out[3])` in
        // tests/emu/driver.cpp.
        let get = |name: &[u8]| unsafe { lib.get::<EmuCounters>(name) }.map(|s| *s);
        let launches = get(b"emu_counters\0").map_err(|_| {
            "libcuda.so.1 has no emu_counters: not the emulated driver (a real GPU)".to_string()
        })?;
        let copies =
            get(b"emu_copy_counters\0").map_err(|_| "libcuda.so.1 has no emu_copy_counters")?;
        Ok(Counters {
            _lib: lib,
            launches,
            copies,
        })
    }

    /// The counts now.
    pub fn now(&self) -> Counts {
        let (mut l, mut c) = ([0u64; 4], [0u64; 3]);
        // SAFETY: the arrays hold the 4 and 3 values the functions write.
        unsafe {
            (self.launches)(l.as_mut_ptr());
            (self.copies)(c.as_mut_ptr());
        }
        Counts {
            launches: l[0],
            htod: c[0],
            dtoh: c[1],
            dtod: c[2],
        }
    }

    /// Launches so far.
    pub fn launches(&self) -> u64 {
        self.now().launches
    }

    /// Host-to-device copies so far.
    pub fn htod(&self) -> u64 {
        self.now().htod
    }
}
