//! Which tests of each GPU test binary run in each mode: libtest filters, with the reasons
//! the modes differ (the emulated driver runs each launch on one thread; ASan costs ~3x,
//! TSan ~50x).

use super::Mode;

/// The libtest arguments for test binary `name` in `mode`; `None`: the binary does not run
/// in that mode.
pub fn test_args(mode: Mode, name: &str) -> Option<Vec<&'static str>> {
    // NVRTC compiling every module (PTX and cubin) launches no kernel and is
    // check-kernels.sh's step 3; here it cost ~5 min per mode on 2 cores.
    let skip_here: &[&str] = match name {
        // Files of backend_tests! bodies (tests/common/backends.rs): the CUDA tests
        // (`cuda::` and `cuda_only::`).
        "project" => &["cuda", "--skip", "nvrtc_compiles_embedded_sources"],
        "tensor_list" | "controller" | "stats" => &["cuda"],
        // The optimizer's one test binary: its CUDA module (tests/optim/cuda.rs).
        "optim" => &["cuda::"],
        _ => &[],
    };
    let mut args = skip_here.to_vec();
    match mode {
        Mode::Plain => {}
        Mode::Asan => {
            // orthonormalize's kernels run under ASan in gpu_kernels (every dtype x k,
            // across chunk boundaries); project's version of that test took 202 of ASan's
            // ~540 s on 2 cores for more layouts of the same kernels, and its segment of 1e6
            // elements adds no bound the smaller layouts miss: both left to the plain mode.
            if name == "project" {
                args.extend([
                    "--skip",
                    "orthonormalize_matches_reference",
                    "--skip",
                    "large_segment_matches_reference",
                ]);
            }
        }
        // TSan costs ~50x: every kernel at small sizes (gpu_kernels runs each project kernel
        // once; project's large layouts are left to the other modes), and the reliability
        // tests that are not repetitions.
        Mode::Tsan => match name {
            // gpu_errors launches no kernel: plain and address modes only.
            "project" | "gpu_errors" => return None,
            "gpu_reliability" => args = vec!["--skip", "twenty_runs", "--skip", "two_backends"],
            // The statistics kernel under TSan as before the merge of the stats tests
            // (gpu_stats): whole plans, several blocks and batches, every alignment; the
            // other bodies add host-side checks and oracle arithmetic that the other modes
            // run (154 s -> ~50 s on 2 cores).
            "stats" => {
                args = vec![
                    "cuda::plan_matches_the_oracle",
                    "cuda::results_do_not_depend_on_alignment",
                    "cuda::finishes_span_several_batches",
                    "cuda::any_batch_size_up_to_the_declared_one",
                ]
            }
            _ => {}
        },
    }
    Some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: Mode, name: &str) -> Option<String> {
        test_args(mode, name).map(|a| a.join(" "))
    }

    #[test]
    fn plain_mode_runs_the_cuda_tests_of_every_binary() {
        let project = "cuda --skip nvrtc_compiles_embedded_sources";
        assert_eq!(args(Mode::Plain, "project").as_deref(), Some(project));
        assert_eq!(args(Mode::Plain, "stats").as_deref(), Some("cuda"));
        assert_eq!(args(Mode::Plain, "tensor_list").as_deref(), Some("cuda"));
        assert_eq!(args(Mode::Plain, "optim").as_deref(), Some("cuda::"));
        assert_eq!(args(Mode::Plain, "gpu_kernels").as_deref(), Some(""));
        assert_eq!(args(Mode::Plain, "gpu_errors").as_deref(), Some(""));
    }

    #[test]
    fn address_mode_leaves_projects_largest_layouts_to_plain() {
        assert_eq!(
            args(Mode::Asan, "project").as_deref(),
            Some(
                "cuda --skip nvrtc_compiles_embedded_sources --skip \
                 orthonormalize_matches_reference --skip large_segment_matches_reference"
            )
        );
        assert_eq!(args(Mode::Asan, "controller").as_deref(), Some("cuda"));
        assert_eq!(args(Mode::Asan, "gpu_errors").as_deref(), Some(""));
    }

    #[test]
    fn race_mode_runs_a_subset() {
        assert_eq!(args(Mode::Tsan, "project"), None);
        assert_eq!(args(Mode::Tsan, "gpu_errors"), None);
        assert_eq!(
            args(Mode::Tsan, "gpu_reliability").as_deref(),
            Some("--skip twenty_runs --skip two_backends")
        );
        let stats = args(Mode::Tsan, "stats").unwrap();
        assert_eq!(stats.split(' ').count(), 4);
        assert!(stats.split(' ').all(|t| t.starts_with("cuda::")));
        assert_eq!(args(Mode::Tsan, "optim").as_deref(), Some("cuda::"));
        assert_eq!(args(Mode::Tsan, "gpu_launches").as_deref(), Some(""));
    }
}
